"""Dataset specifications, label vocabularies and the shared record -> `datasets.Dataset` machinery."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable, NamedTuple, Optional, Sequence

import datasets

from ..configuration_mpiqe import DISTORTION_CLASSES, SCENE_CLASSES

logger = logging.getLogger(__name__)

METADATA_KEY = "mpiqe_hf"


@dataclass(frozen=True)
class DatasetSpec:
    """What the library knows about one IQA dataset.

    `mos_min`/`mos_max` bound the native score stored in the `mos` column; `higher_is_better` gives its
    direction. `score_loss_weight` and `batch_size` are the per-dataset values of the MP-IQE paper.
    `synthetic` is True for datasets built by distorting a few pristine references: their random splits must be
    disjoint by `content_id`.
    """

    name: str
    mos_min: float
    mos_max: float
    higher_is_better: bool
    score_loss_weight: float = 0.5
    batch_size: int = 64
    synthetic: bool = False
    liqe_folder: Optional[str] = None
    liqe_prefix: Optional[str] = None
    description: str = ""

    def normalize(self, mos: float) -> float:
        return normalize_mos(mos, self.mos_min, self.mos_max, self.higher_is_better)


IQA_DATASETS = {
    "koniq10k": DatasetSpec(
        "koniq10k", 1.0, 5.0, True, 0.5, 64, False, "koniq-10k", "koniq10k",
        "KonIQ-10k (Hosu et al. 2020), authentic distortions, MOS on the 1-5 ACR scale.",
    ),
    "kadid10k": DatasetSpec(
        "kadid10k", 1.0, 5.0, True, 0.5, 64, True, "kadid10k", "kadid10k",
        "KADID-10k (Lin et al. 2019), 81 references x 25 distortions x 5 levels, (D)MOS on 1-5, higher is better.",
    ),
    "live": DatasetSpec(
        "live", 0.0, 120.0, False, 0.1, 32, True, "databaserelease2", "live",
        "LIVE IQA release 2 (Sheikh et al. 2006), 29 references, 779 distorted images, DMOS (lower is better).",
    ),
    "csiq": DatasetSpec(
        "csiq", 0.0, 1.0, True, 0.1, 32, True, "CSIQ", "csiq",
        "CSIQ (Larson and Chandler 2010), 30 references, 866 distorted images, stored as 1 - DMOS in [0, 1].",
    ),
    "livec": DatasetSpec(
        "livec", 0.0, 100.0, True, 0.5, 64, False, "ChallengeDB_release", "clive",
        "LIVE In the Wild Image Quality Challenge (Ghadiyaram and Bovik 2015/2016), 1162 images, MOS 0-100.",
    ),
    "bid": DatasetSpec(
        "bid", 0.0, 5.0, True, 0.5, 32, False, "BID", "bid",
        "BID blurred image database (Ciancio et al. 2011), 586 images, MOS 0-5.",
    ),
    "synthetic": DatasetSpec(
        "synthetic", 1.0, 5.0, True, 0.5, 64, True, None, None,
        "Embedded synthetic set: bundled photos x 11 distortion families x 5 levels, pseudo-MOS on 1-5.",
    ),
}

DATASET_ALIASES = {
    "koniq": "koniq10k", "koniq-10k": "koniq10k", "kadid": "kadid10k", "kadid-10k": "kadid10k",
    "clive": "livec", "live_challenge": "livec", "livechallenge": "livec", "live-c": "livec",
    "databaserelease2": "live", "live2": "live",
}


def canonical_dataset_name(name: str) -> Optional[str]:
    key = name.strip().lower()
    key = DATASET_ALIASES.get(key, key)
    return key if key in IQA_DATASETS else None


def get_dataset_spec(name: str) -> DatasetSpec:
    """The [`DatasetSpec`] of a named dataset (`koniq10k`, `kadid10k`, `live`, `csiq`, `livec`, `bid`, `synthetic`)."""
    key = canonical_dataset_name(name)
    if key is None:
        raise ValueError(f"Unknown IQA dataset {name!r}; known: {sorted(IQA_DATASETS)}.")
    return IQA_DATASETS[key]


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


def map_scene(name: str) -> Optional[str]:
    """A scene name (tolerating `still-life`, `Still Life`, `other`) -> one of `SCENE_CLASSES`, or None."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key == "other":
        key = "others"
    return key if key in _SCENE_SET else None


def map_distortion(name: str) -> Optional[str]:
    """A distortion class or LIQE fine-grained name -> one of `DISTORTION_CLASSES`, or None if unknown."""
    key = " ".join(name.strip().lower().replace("_", " ").split())
    return FINE_TO_DISTORTION.get(key)


# ---------------------------------------------------------------------------------------------------------------
# Bad samples
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BadSample:
    file: str
    line: int
    field: str
    reason: str

    def __str__(self):
        return f"{self.file}, line {self.line}, field '{self.field}': {self.reason}"


class RowProblems:
    """Collects row errors: raises at once (`skip=False`) or remembers them for a report (`skip=True`)."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.bad: list[BadSample] = []

    def report(self, file, line, field, reason):
        bad = BadSample(str(file), int(line), field, reason)
        if not self.skip:
            raise ValueError(f"Bad sample in {bad} (pass skip_bad_samples=True to skip bad rows).")
        self.bad.append(bad)

    def warn(self, source):
        if self.bad:
            lines = "\n".join(f"  {b}" for b in self.bad)
            message = f"Skipped {len(self.bad)} bad sample(s) while loading {source}:\n{lines}"
            logger.warning(message)
            warnings.warn(message, stacklevel=3)


def parse_mos(text, problems: RowProblems, file, line, mos_range=None) -> Optional[float]:
    """Parse and check one MOS value; returns None (after reporting) when it is bad."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        problems.report(file, line, "mos", f"not a number: {text!r}")
        return None
    if not math.isfinite(value):
        problems.report(file, line, "mos", f"not a finite number: {text!r}")
        return None
    if mos_range is not None:
        lo, hi = mos_range
        tol = 1e-9 * max(1.0, abs(hi - lo))
        if value < lo - tol or value > hi + tol:
            problems.report(file, line, "mos", f"{value} is outside the native range [{lo}, {hi}]")
            return None
    return value


def check_image(path, problems: RowProblems, file, line, check_files=True, verify_images=False) -> bool:
    if not check_files and not verify_images:
        return True
    if not os.path.isfile(path):
        problems.report(file, line, "image", f"file not found: {path}")
        return False
    if verify_images:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                im.load()
        except Exception as err:  # PIL raises many types for broken files
            problems.report(file, line, "image", f"cannot decode {path}: {type(err).__name__}: {err}")
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Building the datasets.Dataset
# ---------------------------------------------------------------------------------------------------------------


def iqa_features() -> datasets.Features:
    return datasets.Features(
        {
            "image": datasets.Image(),
            "mos": datasets.Value("float64"),
            "mos_normalized": datasets.Value("float64"),
            "scene": datasets.List(datasets.Value("string")),
            "distortion": datasets.Value("string"),
            "content_id": datasets.Value("string"),
        }
    )


class MOSRange(NamedTuple):
    mos_min: float
    mos_max: float
    higher_is_better: bool


@dataclass
class IQARecords:
    """Column lists gathered by a loader before they become a `datasets.Dataset`."""

    image: list = field(default_factory=list)
    mos: list = field(default_factory=list)
    scene: list = field(default_factory=list)
    distortion: list = field(default_factory=list)
    content_id: list = field(default_factory=list)

    def add(self, image, mos, scene=(), distortion=None, content_id=None):
        self.image.append(str(image))
        self.mos.append(float(mos))
        self.scene.append(list(scene))
        self.distortion.append(distortion)
        self.content_id.append(str(content_id if content_id is not None else image))

    def __len__(self):
        return len(self.mos)


def make_metadata(name, mos_min, mos_max, higher_is_better, *, source, spec=None, skipped=(), **extra) -> dict:
    meta = {
        "name": name,
        "mos_min": float(mos_min),
        "mos_max": float(mos_max),
        "higher_is_better": bool(higher_is_better),
        "score_loss_weight": spec.score_loss_weight if spec else 0.5,
        "batch_size": spec.batch_size if spec else 64,
        "synthetic": spec.synthetic if spec else None,
        "source": source,
        "skipped": [asdict(b) for b in skipped],
    }
    meta.update(extra)
    return meta


def metadata_description(meta: dict) -> str:
    return json.dumps({METADATA_KEY: meta}, sort_keys=True)


def build_dataset(records: IQARecords, meta: dict) -> datasets.Dataset:
    lo, hi, up = meta["mos_min"], meta["mos_max"], meta["higher_is_better"]
    data = {
        "image": records.image,
        "mos": records.mos,
        "mos_normalized": [normalize_mos(m, lo, hi, up) for m in records.mos],
        "scene": records.scene,
        "distortion": records.distortion,
        "content_id": records.content_id,
    }
    features = iqa_features()
    info = datasets.DatasetInfo(description=metadata_description(meta), features=features)
    return datasets.Dataset.from_dict(data, features=features, info=info)


def dataset_metadata(ds: datasets.Dataset) -> dict:
    """The loader's metadata stored (as JSON) in `ds.info.description`.

    Keys: name, mos_min, mos_max, higher_is_better, score_loss_weight, batch_size, synthetic, source, skipped
    (the bad rows that were skipped, as dicts with file, line, field, reason) and loader-specific extras.
    The description survives `select`, `shuffle`, `train_test_split` and `save_to_disk`/`load_from_disk`.
    """
    try:
        payload = json.loads(ds.info.description or "")
        return dict(payload[METADATA_KEY])
    except (ValueError, TypeError, KeyError):
        raise ValueError(
            "This dataset carries no mpiqe_hf metadata in `info.description`; load it with "
            "`mpiqe_hf.data.load_iqa_dataset`."
        ) from None


def dataset_mos_range(ds: datasets.Dataset) -> MOSRange:
    """`(mos_min, mos_max, higher_is_better)` of the native `mos` column of a loaded dataset."""
    meta = dataset_metadata(ds)
    return MOSRange(meta["mos_min"], meta["mos_max"], meta["higher_is_better"])


def skipped_samples(ds: datasets.Dataset) -> list[BadSample]:
    """The bad rows that `skip_bad_samples=True` left out, as [`BadSample`] records."""
    return [BadSample(**b) for b in dataset_metadata(ds).get("skipped", [])]


def split_scene_field(text: str) -> list[str]:
    if text is None:
        return []
    parts = str(text).replace(";", "|").split("|")
    return [p.strip() for p in parts if p.strip()]


def scenes_from_names(names: Iterable[str], problems: RowProblems, file, line, ignore=("invalid", "")) -> Optional[list]:
    out = []
    for raw in names:
        if raw is None or raw.strip().lower() in ignore:
            continue
        scene = map_scene(raw)
        if scene is None:
            problems.report(file, line, "scene", f"unknown scene {raw!r}; known: {list(SCENE_CLASSES)}")
            return None
        if scene not in out:
            out.append(scene)
    return out


def distortion_from_name(raw, problems: RowProblems, file, line, field_name="distortion"):
    """Returns (ok, class_or_None)."""
    if raw is None or str(raw).strip() == "" or str(raw).strip().lower() in ("none", "pristine"):
        return True, None
    cls = map_distortion(str(raw))
    if cls is None:
        problems.report(file, line, field_name, f"unknown distortion {raw!r}; known classes: {list(DISTORTION_CLASSES)}")
        return False, None
    return True, cls


def as_sequence(x) -> Sequence:
    return list(x) if not isinstance(x, (list, tuple)) else x
