"""Loaders for the official on-disk layouts of the six datasets of the paper (MOS, plus distortion where encoded).

Layouts (relative to `data_dir`):

- KonIQ-10k: `koniq10k_scores_and_distributions.csv` (`image_name`, `MOS` on 1-5) + `1024x768/` (or `512x384/`).
- KADID-10k: `dmos.csv` (`dist_img`, `ref_img`, `dmos`, `var`) + `images/I01_03_02.png`.
- LIVE release 2: `dmos_realigned.mat` (`dmos_new`, `orgs`) or `dmos.mat` (`dmos`, `orgs`), `refnames_all.mat`
  (or the folders' `info.txt`; a folder with neither is refused), folders `jp2k/ jpeg/ wn/ gblur/ fastfading/`
  with `img<N>.bmp` (982 entries in that order, references skipped).
- CSIQ: `csiq.DMOS.xlsx` (sheet `all_by_image`) or a CSV export `csiq.DMOS.csv` with columns `image`, `dst_idx`,
  `dst_lev`, `dmos`; images `dst_imgs/<type>/<image>.<TYPE>.<level>.png`. Stored as 1 - DMOS like LIQE's files.
- LIVE Challenge: `Data/AllImages_release.mat`, `Data/AllMOS_release.mat`, `Images/`; the 7 training images
  `t1.bmp`..`t7.bmp` are left out (1162 images remain).
- BID: `DatabaseGrades.xlsx` or `DatabaseGrades.csv` (image number, MOS) + `ImageDatabase/DatabaseImage%04d.JPG`.
- SPAQ: `Annotations/MOS and Image attribute scores.xlsx` (or its CSV export `... scores.csv`; columns `Image name`,
  `MOS` on 0-100) + `TestImage/00001.jpg`..`11125.jpg`.
- AGIQA-3K: `data.csv` (`name`, `mos_quality`, ...) + the images in `AGIQA-3K/` (the archive's folder) or next to it.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import datasets
import numpy as np

from .specs import BadSample, IQADatasetInfo, get_dataset_spec, map_distortion
from .validation import finalize_dataset


# KADID-10k distortion index -> LIQE's fine-grained name (checked against LIQE's kadid10k label files).
KADID_DISTORTIONS = {
    1: "gaussian blur",
    2: "lens",
    3: "motion",
    4: "diffusion",
    5: "shifting",
    6: "color quantization",
    7: "oversaturation",
    8: "desaturation",
    9: "jpeg2000 compression",
    10: "jpeg compression",
    11: "white noise",
    12: "white with color",
    13: "impulse",
    14: "multiplicative",
    15: "white noise with denoise",
    16: "brighten",
    17: "darken",
    18: "shifting the mean",
    19: "jitter",
    20: "noneccentricity patch",
    21: "pixelate",
    22: "quantization",
    23: "color blocking",
    24: "sharpness",
    25: "contrast",
}

# LIVE release 2: folders in the order of dmos.mat / refnames_all.mat, their sizes and distortion names.
LIVE_FOLDERS = (
    ("jp2k", 227, "jpeg2000 compression"),
    ("jpeg", 233, "jpeg compression"),
    ("wn", 174, "white noise"),
    ("gblur", 174, "gaussian blur"),
    ("fastfading", 174, "fastfading"),
)

# CSIQ dst_idx -> (folder, file-name tag, distortion name).
CSIQ_DISTORTIONS = {
    1: ("awgn", "AWGN", "white noise"),
    2: ("jpeg", "JPEG", "jpeg compression"),
    3: ("jpeg2000", "jpeg2000", "jpeg2000 compression"),
    4: ("fnoise", "fnoise", "fnoise"),
    5: ("blur", "BLUR", "gaussian blur"),
    6: ("contrast", "contrast", "contrast"),
}

LIVEC_TRAINING_IMAGE = re.compile(r"^t\d+\.bmp$", re.IGNORECASE)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    return path


def _first_existing(root: Path, names, what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise ValueError(f"{what} not found in {root} (looked for {', '.join(names)})")


def _loadmat(path: Path, key_options):
    from scipy.io import loadmat

    try:
        content = loadmat(str(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot read MATLAB file ({type(err).__name__}: {err})") from None
    for key in key_options:
        if key in content:
            return content[key]
    raise ValueError(
        f"{path}: no variable {' or '.join(key_options)} (found {sorted(k for k in content if not k.startswith('__'))})"
    )


def _mat_strings(array) -> list[str]:
    """A MATLAB cell array of strings (any shape) -> Python strings, in MATLAB's column-major order of a vector."""
    out = []
    for item in np.asarray(array, dtype=object).reshape(-1, order="F"):
        while isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size else ""
        out.append(str(item))
    return out


def _read_table(path: Path, sheet=None, required=()):
    """Rows of a CSV or XLSX table: returns `(header, [(line_number, {column: value})])`.

    The header is the first row that contains every `required` column name (case-insensitive).
    """
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError:
            raise ValueError(
                f"Reading {path} needs openpyxl (`pip install openpyxl`), or export the sheet to CSV next to it."
            ) from None
        book = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
        ws = book[sheet] if sheet and sheet in book.sheetnames else book.active
        raw_rows = [list(r) for r in ws.iter_rows(values_only=True)]
        book.close()
    else:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            raw_rows = list(csv.reader(handle))
    header_at = None
    for i, row in enumerate(raw_rows[:20]):
        names = [str(c).strip().lower() if c is not None else "" for c in row]
        if all(r in names for r in required):
            header_at = i
            break
    if header_at is None:
        raise ValueError(f"{path}: no header row with the columns {list(required)}")
    header = [str(c).strip().lower() if c is not None else "" for c in raw_rows[header_at]]
    rows = []
    for i in range(header_at + 1, len(raw_rows)):
        row = raw_rows[i]
        if row is None or all(c is None or str(c).strip() == "" for c in row):
            continue
        rows.append((i + 1, {h: (row[j] if j < len(row) else None) for j, h in enumerate(header) if h}))
    return header, rows


def _int_cell(value):
    if value is None:
        raise ValueError("empty")
    return int(float(str(value).strip()))


# ---------------------------------------------------------------------------------------------------------------


def _koniq(root: Path, out, options):
    csv_path = _require(root / "koniq10k_scores_and_distributions.csv", "KonIQ-10k score file")
    folder = options.get("image_folder")
    if folder is None:
        folder = "1024x768" if (root / "1024x768").is_dir() or not (root / "512x384").is_dir() else "512x384"
    _, rows = _read_table(csv_path, required=("image_name", "mos"))
    for line, row in rows:
        name = str(row.get("image_name") or "").strip()
        if not name:
            out.report(csv_path, line, "image_name", "empty image name")
            continue
        out.add(csv_path, line, f"{folder}/{name}", row.get("mos"), None, name)
    return csv_path


def _kadid(root: Path, out, options):
    csv_path = _require(root / "dmos.csv", "KADID-10k score file")
    _, rows = _read_table(csv_path, required=("dist_img", "dmos"))
    for line, row in rows:
        name = str(row.get("dist_img") or "").strip()
        match = re.match(r"^(I\d+)_(\d+)_(\d+)\.\w+$", name)
        if not match:
            out.report(csv_path, line, "dist_img", f"not a KADID name like I01_03_02.png: {name!r}")
            continue
        index = int(match.group(2))
        if index not in KADID_DISTORTIONS:
            out.report(csv_path, line, "dist_img", f"unknown KADID distortion index {index:02d}")
            continue
        ref = str(row.get("ref_img") or "").strip()
        content = os.path.splitext(ref)[0] if ref else match.group(1)
        out.add(csv_path, line, f"images/{name}", row.get("dmos"), map_distortion(KADID_DISTORTIONS[index]), content)
    return csv_path


def live_reference_map(root) -> dict:
    """`{"jp2k/img1.bmp": "coinsinfountain", ...}` from `refnames_all.mat`, else from the five folders' `info.txt`.

    Raises `ValueError` naming the files when neither source is complete: without the reference names the images of
    one reference cannot be kept on one side of a split, and splitting by image would leak content into the test part.
    """
    root = Path(root)
    total = sum(n for _, n, _ in LIVE_FOLDERS)
    mat = root / "refnames_all.mat"
    if mat.is_file():
        try:
            names = _mat_strings(_loadmat(mat, ("refnames_all",)))
        except ValueError as err:
            mat_problem = str(err)
        else:
            if len(names) == total:
                refs, i = {}, 0
                for folder, count, _ in LIVE_FOLDERS:
                    for j in range(1, count + 1):
                        refs[f"{folder}/img{j}.bmp"] = os.path.splitext(names[i])[0]
                        i += 1
                return refs
            mat_problem = f"{mat} holds {len(names)} reference names, expected {total}"
    else:
        mat_problem = f"{mat} not found"
    infos = [root / folder / "info.txt" for folder, _, _ in LIVE_FOLDERS]
    missing = [str(info) for info in infos if not info.is_file()]
    if missing:
        raise ValueError(
            f"LIVE: no reference names for the images in {root}: {mat_problem}, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Each distorted image must name its reference so that "
            "random splits keep a reference's images on one side (splitting by image would leak content into the "
            "test part); put LIVE release 2's refnames_all.mat (or the folders' info.txt files) there."
        )
    refs = {}
    for (folder, _, _), info in zip(LIVE_FOLDERS, infos):
        with open(info, encoding="utf-8", errors="replace") as handle:
            for raw in handle:
                parts = raw.split()
                if len(parts) >= 2 and parts[1].lower().endswith(".bmp"):
                    refs[f"{folder}/{parts[1]}"] = os.path.splitext(parts[0])[0]
    return refs


def _live(root: Path, out, options):
    use_realigned = options.get("live_realigned", True)
    candidates = ("dmos_realigned.mat", "dmos.mat") if use_realigned else ("dmos.mat",)
    mat_path = _first_existing(root, candidates, "LIVE DMOS file")
    dmos = np.asarray(_loadmat(mat_path, ("dmos_new", "dmos")), dtype=float).reshape(-1)
    orgs = np.asarray(_loadmat(mat_path, ("orgs",)), dtype=float).reshape(-1)
    total = sum(n for _, n, _ in LIVE_FOLDERS)
    if len(dmos) != total or len(orgs) != total:
        raise ValueError(f"{mat_path}: expected {total} DMOS and orgs entries, found {len(dmos)} and {len(orgs)}")
    refs = live_reference_map(root)
    i = 0
    for folder, count, fine in LIVE_FOLDERS:
        for j in range(1, count + 1):
            entry = i + 1
            i += 1
            if orgs[entry - 1] == 1:
                continue  # a reference image listed inside the distortion folder
            rel = f"{folder}/img{j}.bmp"
            if rel not in refs:
                out.report(mat_path, entry, "content_id", f"{rel} is not listed in {folder}/info.txt (no reference)")
                continue
            out.add(mat_path, entry, rel, dmos[entry - 1], map_distortion(fine), refs[rel])
    return mat_path


def _csiq(root: Path, out, options):
    table = _first_existing(root, ("csiq.DMOS.xlsx", "csiq.DMOS.csv", "csiq_dmos.csv"), "CSIQ DMOS table")
    _, rows = _read_table(table, sheet="all_by_image", required=("image", "dst_idx", "dst_lev", "dmos"))
    for line, row in rows:
        try:
            idx = _int_cell(row.get("dst_idx"))
        except ValueError:
            out.report(table, line, "dst_idx", f"not an integer: {row.get('dst_idx')!r}")
            continue
        if idx not in CSIQ_DISTORTIONS:
            out.report(table, line, "dst_idx", f"unknown CSIQ distortion index {idx}")
            continue
        try:
            level = _int_cell(row.get("dst_lev"))
        except ValueError:
            out.report(table, line, "dst_lev", f"not an integer: {row.get('dst_lev')!r}")
            continue
        image = row.get("image")
        image = str(int(image)) if isinstance(image, (int, float)) else str(image or "").strip()
        if not image:
            out.report(table, line, "image", "empty image name")
            continue
        try:
            mos = 1.0 - float(row.get("dmos"))
        except (TypeError, ValueError):
            out.report(table, line, "dmos", f"not a number: {row.get('dmos')!r}")
            continue
        folder, tag, fine = CSIQ_DISTORTIONS[idx]
        out.add(table, line, f"dst_imgs/{folder}/{image}.{tag}.{level}.png", mos, map_distortion(fine), image)
    return table


def _livec(root: Path, out, options):
    names_path = _require(root / "Data" / "AllImages_release.mat", "LIVE Challenge image list")
    mos_path = _require(root / "Data" / "AllMOS_release.mat", "LIVE Challenge MOS file")
    names = _mat_strings(_loadmat(names_path, ("AllImages_release",)))
    mos_all = np.asarray(_loadmat(mos_path, ("AllMOS_release",)), dtype=float).reshape(-1)
    if len(names) != len(mos_all):
        raise ValueError(f"{mos_path}: {len(mos_all)} MOS values for {len(names)} images in {names_path}")
    for entry, (name, value) in enumerate(zip(names, mos_all), start=1):
        if LIVEC_TRAINING_IMAGE.match(name):
            continue  # the 7 training images shown to subjects before the study
        out.add(mos_path, entry, f"Images/{name}", value, None, name)
    return mos_path


def _bid(root: Path, out, options):
    places = [root, root / "ImageDatabase"]
    names = ("DatabaseGrades.xlsx", "DatabaseGrades.csv")
    table = next((p / n for p in places for n in names if (p / n).is_file()), None)
    if table is None:
        raise ValueError(f"BID grade table not found in {root} (looked for {', '.join(names)})")
    image_dir = root / "ImageDatabase" if (root / "ImageDatabase").is_dir() else root
    if table.suffix.lower() == ".csv":
        with open(table, newline="", encoding="utf-8-sig") as handle:
            raw_rows = list(csv.reader(handle))
    else:
        try:
            import openpyxl
        except ImportError:
            raise ValueError(
                f"Reading {table} needs openpyxl (`pip install openpyxl`), or export it as CSV."
            ) from None
        book = openpyxl.load_workbook(str(table), read_only=True, data_only=True)
        raw_rows = [list(r) for r in book.active.iter_rows(values_only=True)]
        book.close()
    for line, row in enumerate(raw_rows, start=1):
        if not row or row[0] is None or str(row[0]).strip() == "":
            continue
        try:
            number = _int_cell(row[0])
        except ValueError:
            if line == 1:
                continue  # header row
            out.report(table, line, "image", f"not an image number: {row[0]!r}")
            continue
        if len(row) < 2:
            out.report(table, line, "mos", "missing MOS column")
            continue
        name = f"DatabaseImage{number:04d}.JPG"
        out.add(table, line, os.path.relpath(image_dir / name, root), row[1], None, name)
    return table


SPAQ_SCORE_FILES = ("MOS and Image attribute scores.xlsx", "MOS and Image attribute scores.csv")


def _spaq(root: Path, out, options):
    table = _first_existing(root / "Annotations", SPAQ_SCORE_FILES, "SPAQ MOS table")
    _, rows = _read_table(table, required=("image name", "mos"))
    for line, row in rows:
        name = str(row.get("image name") or "").strip()
        if not name:
            out.report(table, line, "image name", "empty image name")
            continue
        out.add(table, line, f"TestImage/{name}", row.get("mos"), None, name)
    return table


def _agiqa3k(root: Path, out, options):
    csv_path = _require(root / "data.csv", "AGIQA-3K score file")
    folder = options.get("image_folder")
    if folder is None:
        folder = "AGIQA-3K" if (root / "AGIQA-3K").is_dir() else "."
    _, rows = _read_table(csv_path, required=("name", "mos_quality"))
    for line, row in rows:
        name = str(row.get("name") or "").strip()
        if not name:
            out.report(csv_path, line, "name", "empty image name")
            continue
        out.add(csv_path, line, os.path.normpath(os.path.join(folder, name)), row.get("mos_quality"), None, name)
    return csv_path


class RawRows:
    """The rows an official loader read, as the raw columns of `validation.finalize_dataset`, plus the rows it could
    not read (bad index, unknown distortion code, ...)."""

    def __init__(self):
        self.columns = {k: [] for k in ("source_file", "source_line", "image", "mos", "distortion", "content_id")}
        self.problems: list[BadSample] = []

    def add(self, file, line, image, mos, distortion, content_id):
        for key, value in zip(self.columns, (str(file), int(line), str(image), _text(mos), distortion, content_id)):
            self.columns[key].append(value)

    def report(self, file, line, field, reason):
        self.problems.append(BadSample(str(file), int(line), field, reason))

    def dataset(self) -> datasets.Dataset:
        features = datasets.Features(
            {k: datasets.Value("int64" if k == "source_line" else "string") for k in self.columns}
        )
        return datasets.Dataset.from_dict(self.columns, features=features)


def _text(value):
    if value is None:
        return None
    return repr(float(value)) if isinstance(value, (float, int, np.floating, np.integer)) else str(value)


OFFICIAL_LOADERS = {
    "koniq10k": _koniq,
    "kadid10k": _kadid,
    "live": _live,
    "csiq": _csiq,
    "livec": _livec,
    "bid": _bid,
    "spaq": _spaq,
    "agiqa3k": _agiqa3k,
}


def load_official_dataset(
    name: str,
    data_dir,
    *,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
    num_proc=None,
    **options,
):
    """Load `name` from its official release layout under `data_dir` (scene labels are empty there)."""
    spec = get_dataset_spec(name)
    if spec.name not in OFFICIAL_LOADERS:
        raise ValueError(f"{spec.name!r} has no official on-disk layout.")
    if data_dir is None:
        raise ValueError(f"{spec.name}: `data_dir` (the dataset root) is required.")
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"{spec.name}: data_dir {root} is not a folder.")
    rows = RawRows()
    source_file = OFFICIAL_LOADERS[spec.name](root, rows, options)
    info = IQADatasetInfo.from_spec(
        spec,
        "official",
        data_dir=str(root.resolve()),
        score_file=str(Path(source_file).resolve()),
    )
    return finalize_dataset(
        rows.dataset(),
        info,
        source=str(source_file),
        root=root,
        mos_range=(spec.mos_min, spec.mos_max),
        check_files=check_files,
        verify_images=verify_images,
        skip_bad_samples=skip_bad_samples,
        num_proc=num_proc,
        earlier_problems=rows.problems,
        description=spec.description,
        path_field="image",
    )
