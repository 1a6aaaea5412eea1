"""Dataset specifications, label vocabularies, the column layout and the typed dataset facts ([`IQADatasetInfo`])."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import NamedTuple

import datasets

from ..configuration_mpiqe import DISTORTION_CLASSES, SCENE_CLASSES


@dataclass(frozen=True)
class DatasetSpec:
    """What the library knows about one IQA dataset.

    `mos_min`/`mos_max` bound the native score stored in the `mos` column; `higher_is_better` gives its
    direction. `score_loss_weight` and `batch_size` are the per-dataset values of the MP-IQE paper.
    `synthetic` is True for datasets built by distorting a few pristine references: their random splits must be
    disjoint by `content_id`. `max_image_size` is the default bound (px) on an image's longer side before it is
    cropped, in training and evaluation, where the authors' code shrinks the dataset's images (None: native pixels;
    sources in docs/decisions.md).
    """

    name: str
    mos_min: float
    mos_max: float
    higher_is_better: bool
    score_loss_weight: float = 0.5
    batch_size: int = 64
    synthetic: bool = False
    liqe_folder: str | None = None
    liqe_prefix: str | None = None
    description: str = ""
    max_image_size: int | None = None

    def normalize(self, mos: float) -> float:
        return normalize_mos(mos, self.mos_min, self.mos_max, self.higher_is_better)


IQA_DATASETS = {
    "koniq10k": DatasetSpec(
        "koniq10k",
        1.0,
        5.0,
        True,
        0.5,
        64,
        False,
        "koniq-10k",
        "koniq10k",
        "KonIQ-10k (Hosu et al. 2020), authentic distortions, MOS on the 1-5 ACR scale.",
        # DEIQT (IQA/build.py) resizes KonIQ's 1024x768 images to 512x384 for training and testing.
        max_image_size=512,
    ),
    "kadid10k": DatasetSpec(
        "kadid10k",
        1.0,
        5.0,
        True,
        0.5,
        64,
        True,
        "kadid10k",
        "kadid10k",
        "KADID-10k (Lin et al. 2019), 81 references x 25 distortions x 5 levels, (D)MOS on 1-5, higher is better.",
    ),
    "live": DatasetSpec(
        "live",
        0.0,
        120.0,
        False,
        0.1,
        32,
        True,
        "databaserelease2",
        "live",
        "LIVE IQA release 2 (Sheikh et al. 2006), 29 references, 779 distorted images, DMOS (lower is better).",
    ),
    "csiq": DatasetSpec(
        "csiq",
        0.0,
        1.0,
        True,
        0.1,
        32,
        True,
        "CSIQ",
        "csiq",
        "CSIQ (Larson and Chandler 2010), 30 references, 866 distorted images, stored as 1 - DMOS in [0, 1].",
    ),
    "livec": DatasetSpec(
        "livec",
        0.0,
        100.0,
        True,
        0.5,
        64,
        False,
        "ChallengeDB_release",
        "clive",
        "LIVE In the Wild Image Quality Challenge (Ghadiyaram and Bovik 2015/2016), 1162 images, MOS 0-100.",
    ),
    "bid": DatasetSpec(
        "bid",
        0.0,
        5.0,
        True,
        0.5,
        32,
        False,
        "BID",
        "bid",
        "BID blurred image database (Ciancio et al. 2011), 586 images, MOS 0-5.",
        # LIQE (utils.py, AdaptiveResize(768)) shrinks images whose shorter side exceeds 768 px, which among the
        # paper's datasets only BID's are: a 4:3 frame becomes 1024x768.
        max_image_size=1024,
    ),
    # SPAQ and AGIQA-3K are not in the paper: test sets of the KonIQ cross-dataset protocol of recent papers
    # (docs/data.md), with the paper's defaults for authentic datasets (lambda2 0.5, batch 64).
    "spaq": DatasetSpec(
        "spaq",
        0.0,
        100.0,
        True,
        0.5,
        64,
        False,
        None,
        None,
        "SPAQ (Fang et al. 2020), 11,125 smartphone photos, MOS 0-100.",
        # Q-Align and DeQA-Score resize SPAQ to a shorter side of 512; the library bounds the longer side, and
        # 683 gives a 4:3 frame (most of SPAQ's) a shorter side of 512.
        max_image_size=683,
    ),
    "agiqa3k": DatasetSpec(
        "agiqa3k",
        0.0,
        5.0,
        True,
        0.5,
        64,
        False,
        None,
        None,
        "AGIQA-3K (Li et al. 2023), 2,982 AI-generated images, perceptual-quality MOS normalised to 0-5.",
    ),
    "synthetic": DatasetSpec(
        "synthetic",
        1.0,
        5.0,
        True,
        0.5,
        64,
        True,
        None,
        None,
        "Embedded synthetic set: bundled photos x 11 distortion families x 5 levels, pseudo-MOS on 1-5.",
    ),
}

DATASET_ALIASES = {
    "koniq": "koniq10k",
    "koniq-10k": "koniq10k",
    "kadid": "kadid10k",
    "kadid-10k": "kadid10k",
    "clive": "livec",
    "live_challenge": "livec",
    "livechallenge": "livec",
    "live-c": "livec",
    "databaserelease2": "live",
    "live2": "live",
    "agiqa-3k": "agiqa3k",
    "agiqa": "agiqa3k",
}


def canonical_dataset_name(name: str) -> str | None:
    key = name.strip().lower()
    key = DATASET_ALIASES.get(key, key)
    return key if key in IQA_DATASETS else None


def get_dataset_spec(name: str) -> DatasetSpec:
    """The [`DatasetSpec`] of a named dataset (`koniq10k`, `kadid10k`, `live`, `csiq`, `livec`, `bid`, `spaq`,
    `agiqa3k`, `synthetic`)."""
    key = canonical_dataset_name(name)
    if key is None:
        raise ValueError(f"Unknown IQA dataset {name!r}; known: {sorted(IQA_DATASETS)}.")
    return IQA_DATASETS[key]


def default_max_image_size(name_or_path: str | None) -> int | None:
    """The [`DatasetSpec.max_image_size`] of a named dataset (None: the synthetic set), or None for anything else.

    A folder is never taken for a named dataset, even when it is called `bid`: the rule of `load_iqa_dataset`.
    """
    name = "synthetic" if name_or_path is None else os.fspath(name_or_path)
    canonical = canonical_dataset_name(name) if not os.path.isdir(name) else None
    return IQA_DATASETS[canonical].max_image_size if canonical is not None else None


def normalize_mos(mos: float, mos_min: float, mos_max: float, higher_is_better: bool = True) -> float:
    """Map a native score to [0, 1] with 1 = best quality."""
    t = (mos - mos_min) / (mos_max - mos_min)
    if not higher_is_better:
        t = 1.0 - t
    return min(1.0, max(0.0, t))


# ---------------------------------------------------------------------------------------------------------------
# Label vocabularies
# ---------------------------------------------------------------------------------------------------------------

# Fine-grained distortion names used in the LIQE label files -> the 11 classes (table of LIQE, see
# shared/reference/liqe-labels.md).
FINE_TO_DISTORTION = {
    "jpeg2000 compression": "jpeg2000 compression",
    "fastfading": "jpeg2000 compression",
    "jpeg compression": "jpeg compression",
    "white noise": "noise",
    "fnoise": "noise",
    "white with color": "noise",
    "impulse": "noise",
    "multiplicative": "noise",
    "white noise with denoise": "noise",
    "realistic noise": "noise",
    "gaussian blur": "blur",
    "lens": "blur",
    "motion": "blur",
    "shifting": "blur",
    "realistic blur": "blur",
    "diffusion": "color",
    "oversaturation": "color",
    "desaturation": "color",
    "contrast": "contrast",
    "sharpness": "contrast",
    "realistic contrast change": "contrast",
    "brighten": "overexposure",
    "overexposure": "overexposure",
    "darken": "underexposure",
    "underexposure": "underexposure",
    "jitter": "spatial",
    "noneccentricity patch": "spatial",
    "pixelate": "spatial",
    "color blocking": "spatial",
    "color quantization": "quantization",
    "quantization": "quantization",
    "shifting the mean": "other",
    "other realistic": "other",
}
for _name in DISTORTION_CLASSES:
    FINE_TO_DISTORTION.setdefault(_name, _name)

_SCENE_SET = set(SCENE_CLASSES)


def map_scene(name: str) -> str | None:
    """A scene name (tolerating `still-life`, `Still Life`, `other`) -> one of `SCENE_CLASSES`, or None."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key == "other":
        key = "others"
    return key if key in _SCENE_SET else None


def map_distortion(name: str) -> str | None:
    """A distortion class or LIQE fine-grained name -> one of `DISTORTION_CLASSES`, or None if unknown."""
    key = " ".join(name.strip().lower().replace("_", " ").split())
    return FINE_TO_DISTORTION.get(key)


# ---------------------------------------------------------------------------------------------------------------
# Column layout and dataset facts
# ---------------------------------------------------------------------------------------------------------------

#: `distortion` value of a row without a distortion label (pristine or unknown), `datasets`' "no label" convention.
NO_LABEL = -1


def iqa_features() -> datasets.Features:
    """The columns every loader returns (see docs/data.md)."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "mos": datasets.Value("float64"),
            "mos_normalized": datasets.Value("float64"),
            "scene": datasets.List(datasets.ClassLabel(names=list(SCENE_CLASSES))),
            "distortion": datasets.ClassLabel(names=list(DISTORTION_CLASSES)),
            "content_id": datasets.Value("string"),
        }
    )


@dataclass(frozen=True)
class BadSample:
    """A row left out by `skip_bad_samples=True`: the file and line it came from, the field and the reason."""

    file: str
    line: int
    field: str
    reason: str

    def __str__(self):
        return f"{self.file}, line {self.line}, field '{self.field}': {self.reason}"


class MOSRange(NamedTuple):
    mos_min: float
    mos_max: float
    higher_is_better: bool


@dataclass(frozen=True)
class IQADatasetInfo:
    """
    What a loader knows about the dataset it returned; read it with [`iqa_info`].

    Args:
        name (`str`): `koniq10k`, ..., `synthetic`, or the folder name / Hub id of other datasets.
        mos_min, mos_max (`float`): the native range of the `mos` column; `mos_normalized` is computed from it.
        higher_is_better (`bool`): direction of `mos` (False for DMOS).
        source (`str`): the loader: `"liqe"`, `"official"`, `"folder"`, `"synthetic"` or `"datasets"`.
        split_protocol (`str`): `"by_content"` when random splits must keep each reference content on one side
            (synthetically distorted datasets; folders whose `content_id` repeats), else `"by_image"`.
        mos_range_from_data (`bool`): the range was inferred from the data (no `mos_range` given, not a named dataset).
        score_loss_weight (`float`, *optional*), batch_size (`int`, *optional*): the paper's λ2 and batch size of a
            named dataset; None for others.
        data_dir (`str`, *optional*): the folder image paths are relative to.
        label_files (`tuple[str]`): the LIQE label files read (absolute paths).
        score_file (`str`, *optional*): the official score file read.
        seed (`int`, *optional*): the build seed of the synthetic set.
        live_references_found (`bool`, *optional*): LIVE only: whether reference names were found for `content_id`.
        skipped (`tuple[BadSample]`): the bad rows left out by `skip_bad_samples=True`.
    """

    name: str
    mos_min: float
    mos_max: float
    higher_is_better: bool
    source: str
    split_protocol: str = "by_image"
    mos_range_from_data: bool = False
    score_loss_weight: float | None = None
    batch_size: int | None = None
    data_dir: str | None = None
    label_files: tuple = ()
    score_file: str | None = None
    seed: int | None = None
    live_references_found: bool | None = None
    skipped: tuple = ()

    def __post_init__(self):
        # Read back from JSON (dataset_info.json), tuples arrive as lists and BadSamples as dicts.
        object.__setattr__(self, "label_files", tuple(self.label_files))
        object.__setattr__(
            self, "skipped", tuple(b if isinstance(b, BadSample) else BadSample(**b) for b in self.skipped)
        )
        if self.split_protocol not in ("by_content", "by_image"):
            raise ValueError(f"split_protocol must be 'by_content' or 'by_image', got {self.split_protocol!r}.")

    @property
    def mos_range(self) -> MOSRange:
        return MOSRange(self.mos_min, self.mos_max, self.higher_is_better)

    @classmethod
    def from_spec(cls, spec: DatasetSpec, source: str, **fields) -> IQADatasetInfo:
        """The facts of a named dataset (range, direction, split protocol, the paper's λ2 and batch) plus `fields`."""
        return cls(
            name=spec.name,
            mos_min=spec.mos_min,
            mos_max=spec.mos_max,
            higher_is_better=spec.higher_is_better,
            source=source,
            split_protocol="by_content" if spec.synthetic else "by_image",
            score_loss_weight=spec.score_loss_weight,
            batch_size=spec.batch_size,
            **fields,
        )

    @classmethod
    def from_dict(cls, values: dict) -> IQADatasetInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class IQADatasetInfoCarrier(datasets.DatasetInfo):
    """A `datasets.DatasetInfo` with the [`IQADatasetInfo`] in its `iqa` field.

    `datasets` copies a dataset's info with `info.copy()`, which keeps the class and its fields, so the facts follow
    `select`, `filter`, `shuffle`, `train_test_split`, `cast`, `with_transform` and single-process `map`;
    `save_to_disk` writes them under `"iqa"` in `dataset_info.json`, from where `load_iqa_dataset(folder)` reads
    them back. A multi-process `map` (and `concatenate_datasets` of differing datasets) builds a plain
    `DatasetInfo`: re-attach the facts with [`with_iqa_info`].
    """

    iqa: IQADatasetInfo | None = None

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.iqa, dict):
            self.iqa = IQADatasetInfo.from_dict(self.iqa)


def with_iqa_info(ds: datasets.Dataset, info: IQADatasetInfo, description: str = "") -> datasets.Dataset:
    """The rows of `ds` (unformatted) in a dataset whose `info` carries `info` (read it back with [`iqa_info`])."""
    # A new Dataset holds the table only, not a selection over it: bake a select/shuffle in first (no copy otherwise).
    table = ds.flatten_indices() if ds._indices is not None else ds
    carrier = IQADatasetInfoCarrier(description=description or ds.info.description, features=ds.features, iqa=info)
    return datasets.Dataset(table.data, info=carrier, split=ds.split)


def iqa_info(ds: datasets.Dataset) -> IQADatasetInfo:
    """The [`IQADatasetInfo`] of a dataset returned by `load_iqa_dataset` (or a split, selection or shuffle of one)."""
    info = getattr(ds.info, "iqa", None)
    if not isinstance(info, IQADatasetInfo):
        raise ValueError(
            "This dataset carries no IQADatasetInfo; load it with `mpiqe_hf.load_iqa_dataset` (which also reads a "
            "`save_to_disk` folder of one back), or re-attach the facts with `with_iqa_info(ds, iqa_info(original))` "
            "after a multi-process `map`."
        )
    return info


def dataset_mos_range(ds: datasets.Dataset) -> MOSRange:
    """`(mos_min, mos_max, higher_is_better)` of the native `mos` column of a loaded dataset."""
    return iqa_info(ds).mos_range


def skipped_samples(ds: datasets.Dataset) -> list[BadSample]:
    """The bad rows that `skip_bad_samples=True` left out, as [`BadSample`] records."""
    return list(iqa_info(ds).skipped)
