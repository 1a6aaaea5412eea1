"""From a loader's raw table to the library's layout: every row checked in one pass, every problem reported together.

A loader reads its label source into a `datasets.Dataset` of raw columns, one row per sample:

- `source_file` (str), `source_line` (int): where the row came from, for the messages;
- `image`: a path (str, absolute or relative to the dataset folder), or a `datasets.Image(decode=False)` column;
- `mos` (str or float), `scene` (a `|`-separated str or a list of names), `distortion` (str), `content_id` (str);
  `scene`, `distortion` and `content_id` are optional.

[`finalize_dataset`] parses and checks them with batched `map` (in `num_proc` processes when images are decoded),
refuses duplicated images, MOS outside the range and, when the range is inferred, implausible MOS, then raises one
`ValueError` listing every bad row, or, with `skip_bad_samples=True`, drops them with one warning and records them
in the [`IQADatasetInfo`].
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from ..configuration_mpiqe import DISTORTION_CLASSES, SCENE_CLASSES
from .specs import NO_LABEL, BadSample, IQADatasetInfo, iqa_features, map_distortion, map_scene, with_iqa_info


#: Scene entries that mean "no scene" (LIQE writes `invalid` in unused slots).
EMPTY_SCENES = ("", "invalid")
#: Distortion entries that mean "no distortion label".
EMPTY_DISTORTIONS = ("", "none", "pristine")
#: Rows from which images are decoded in several processes (`verify_images=True`, `num_proc=None`).
PARALLEL_VERIFY_MIN_ROWS = 1000
#: Implausible-MOS rule for inferred ranges (see docs/data.md).
NON_NEGATIVE_SHARE = 0.9
FAR_OUT_IQR = 3.0

PROBLEM = datasets.Features({"field": datasets.Value("string"), "reason": datasets.Value("string")})


def record_problem(problems: list, field: str, reason: str):
    problems.append({"field": field, "reason": reason})


def resolve_image_path(name, root: Path | None):
    """`(absolute path, None)` or `(None, reason)`: `name` relative to `root` must stay inside it."""
    if name is None or str(name).strip() == "":
        return None, "empty file name"
    name = str(name).strip()
    if "://" in name:
        return None, f"{name!r} is a URL; file names are paths inside the dataset folder"
    if root is None:
        return os.path.abspath(name), None
    path = os.path.normpath(os.path.join(root, name))  # lexical: symlinks inside the folder stay allowed
    if os.path.commonpath([path, str(root)]) != str(root):
        return None, f"{name!r} leads outside the dataset folder {root}"
    return path, None


def parse_mos(value, mos_range) -> tuple[float | None, str | None]:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None, "missing MOS (empty or NaN)"
    try:
        mos = float(value)
    except (TypeError, ValueError):
        return None, f"not a number: {value!r}"
    if math.isnan(mos):
        return None, "missing MOS (empty or NaN)"
    if math.isinf(mos):
        return None, f"not a finite number: {value!r}"
    if mos_range is not None:
        lo, hi = mos_range
        tol = 1e-9 * max(1.0, abs(hi - lo))
        if mos < lo - tol or mos > hi + tol:
            return None, f"{mos} is outside the native range [{lo}, {hi}]"
    return mos, None


def parse_scenes(value, scene_names) -> tuple[list, str | None]:
    if value is None:
        return [], None
    if isinstance(value, str):
        entries = value.replace(";", "|").split("|")
    else:
        entries = [scene_names[v] if isinstance(v, int) and scene_names else v for v in value]
    out = []
    for raw in entries:
        if raw is None or str(raw).strip().lower() in EMPTY_SCENES:
            continue
        scene = map_scene(str(raw))
        if scene is None:
            return [], f"unknown scene {raw!r}; known: {list(SCENE_CLASSES)}"
        index = SCENE_CLASSES.index(scene)
        if index not in out:
            out.append(index)
    return out, None


def parse_distortion(value, distortion_names) -> tuple[int, str | None]:
    if isinstance(value, int) and distortion_names:
        value = distortion_names[value] if value >= 0 else None
    if value is None or str(value).strip().lower() in EMPTY_DISTORTIONS:
        return NO_LABEL, None
    name = map_distortion(str(value))
    if name is None:
        return NO_LABEL, f"unknown distortion {value!r}; known classes: {list(DISTORTION_CLASSES)}"
    return DISTORTION_CLASSES.index(name), None


def _check_rows(
    batch, *, root, mos_range, check_files, verify_images, image_is_path, scene_names, distortion_names, path_field
):
    """Batched `map` function: parsed columns plus each row's `problems` (an empty list for a good row)."""
    from ..image_utils_mpiqe import load_image  # the shared decoder; its ValueError names the file

    size = len(batch["mos"])
    scenes_in = batch.get("scene", [None] * size)
    distortions_in = batch.get("distortion", [None] * size)
    contents_in = batch.get("content_id", [None] * size)
    out = {"mos": [], "scene": [], "distortion": [], "content_id": [], "problems": []}
    if image_is_path:
        out["image"] = []
    for i in range(size):
        problems = []
        image = batch["image"][i]
        if image_is_path:
            path, reason = resolve_image_path(image, root)
            if reason:
                record_problem(problems, path_field, reason)
            out["image"].append(path)
            default_content = str(image).strip() if image is not None else None
        else:
            path = (image or {}).get("path")
            default_content = path or f"row-{batch['source_line'][i] - 1}"
        mos, reason = parse_mos(batch["mos"][i], mos_range)
        if reason:
            record_problem(problems, "mos", reason)
        scenes, reason = parse_scenes(scenes_in[i], scene_names)
        if reason:
            record_problem(problems, "scene", reason)
        distortion, reason = parse_distortion(distortions_in[i], distortion_names)
        if reason:
            record_problem(problems, "distortion", reason)
        if (check_files or verify_images) and not any(p["field"] == path_field for p in problems):
            if image_is_path and not os.path.isfile(path):
                record_problem(problems, "image", f"file not found: {path}")
            elif not image_is_path and not (image or {}).get("bytes") and not (path and os.path.isfile(path)):
                record_problem(problems, "image", f"no image bytes and file not found: {path}")
            elif verify_images:
                try:
                    load_image(path if image_is_path else image).close()
                except ValueError as err:
                    record_problem(problems, "image", str(err))
        content = contents_in[i]
        out["mos"].append(mos)
        out["scene"].append(scenes)
        out["distortion"].append(distortion)
        out["content_id"].append(str(content).strip() if content not in (None, "") else default_content)
        out["problems"].append(problems)
    return out


def implausible_mos(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The rule for inferred ranges: `(mask, reasons)` of the values to refuse (see docs/data.md).

    1. Sign: when at least 90 % of the values are >= 0, the scale is taken as non-negative and negatives are refused.
    2. Far out: with at least 4 values and a positive interquartile range, values beyond Tukey's far-out fences
       `[Q1 - 3 IQR, Q3 + 3 IQR]` are refused.
    """
    mask = np.zeros(len(values), dtype=bool)
    reasons = [""] * len(values)
    if len(values) == 0:
        return mask, reasons
    if np.mean(values >= 0) >= NON_NEGATIVE_SHARE:
        for i in np.flatnonzero(values < 0):
            mask[i] = True
            reasons[i] = (
                f"negative MOS {values[i]} on a non-negative scale ({np.mean(values >= 0):.0%} of the values are >= 0); "
                "pass mos_range=(low, high) (--mos_range LO HI to the scripts) if it is real"
            )
    if len(values) >= 4:
        q1, q3 = np.percentile(values, [25, 75])
        iqr = q3 - q1
        if iqr > 0:
            low, high = q1 - FAR_OUT_IQR * iqr, q3 + FAR_OUT_IQR * iqr
            for i in np.flatnonzero((values < low) | (values > high)):
                if not mask[i]:
                    mask[i] = True
                    reasons[i] = (
                        f"MOS {values[i]} is far outside the other values (beyond [{low:.4g}, {high:.4g}] = quartiles "
                        f"-/+ {FAR_OUT_IQR:g} IQR); pass mos_range=(low, high) (--mos_range LO HI to the scripts) if "
                        "it is real"
                    )
    return mask, reasons


def _normalize_batch(batch, lo, hi, higher_is_better):
    t = (np.asarray(batch["mos"], dtype=np.float64) - lo) / (hi - lo)
    if not higher_is_better:
        t = 1.0 - t
    return {"mos_normalized": np.clip(t, 0.0, 1.0)}


def _auto_num_proc(num_proc, num_rows, verify_images):
    if num_proc is not None:
        return num_proc if num_proc > 1 else None
    if verify_images and num_rows >= PARALLEL_VERIFY_MIN_ROWS:
        return min(os.cpu_count() or 1, 8) or None
    return None


def format_problems(bad: Sequence[BadSample]) -> str:
    return "\n".join(f"  {b}" for b in bad)


def _parse_rows(raw, *, root, mos_range, check_files, verify_images, num_proc, path_field):
    """`(parsed, image_is_path)`: each raw row checked by `_check_rows`, its problems in a `problems` column."""
    image_is_path = not isinstance(raw.features["image"], datasets.Image)
    if not image_is_path and raw.features["image"].decode:
        raw = raw.cast_column("image", datasets.Image(decode=False))
    scene_feature = raw.features.get("scene")
    scene_names = getattr(getattr(scene_feature, "feature", None), "names", None)
    distortion_names = getattr(raw.features.get("distortion"), "names", None)
    parsed_features = datasets.Features(
        {
            "source_file": datasets.Value("string"),
            "source_line": datasets.Value("int64"),
            "image": datasets.Value("string") if image_is_path else datasets.Image(decode=False),
            "mos": datasets.Value("float64"),
            "scene": datasets.List(datasets.Value("int64")),
            "distortion": datasets.Value("int64"),
            "content_id": datasets.Value("string"),
            "problems": datasets.List(PROBLEM),
        }
    )
    parsed = raw.map(
        _check_rows,
        batched=True,
        fn_kwargs=dict(
            root=None if root is None else str(Path(root).resolve()),
            mos_range=mos_range,
            check_files=check_files,
            verify_images=verify_images,
            image_is_path=image_is_path,
            scene_names=scene_names,
            distortion_names=distortion_names,
            path_field=path_field,
        ),
        remove_columns=[c for c in raw.column_names if c not in ("source_file", "source_line", "image")],
        features=parsed_features,
        num_proc=_auto_num_proc(num_proc, len(raw), verify_images),
        load_from_cache_file=False,  # the files may have changed since a cached check: look again
        desc="Checking images" if verify_images else "Checking rows",
    )
    return parsed, image_is_path


def _cross_row_problems(parsed, image_is_path, bad_rows, lines, check_mos, path_field) -> dict:
    """`{row: [(field, reason), ...]}` of the problems seen only across rows: an image listed twice and, with
    `check_mos` (a range inferred from the data), implausible MOS values among the rows that are otherwise good."""
    extra: dict[int, list[tuple[str, str]]] = {}
    # Duplicated images: the later rows are refused, naming the line of the first one.
    image_column = parsed.data.column("image")
    paths = pd.Series((image_column if image_is_path else pc.struct_field(image_column, "path")).to_pylist())
    listed = paths[paths.notna().to_numpy() & ~bad_rows]
    first_line = pd.Series(lines[listed.index], index=listed.index).groupby(listed.to_numpy()).transform("first")
    for i in listed.index[listed.duplicated(keep="first").to_numpy()]:
        extra.setdefault(int(i), []).append(
            (path_field, f"image {paths[i]!r} is listed twice (first on line {first_line[i]})")
        )

    if check_mos:
        mos = parsed.with_format("numpy")["mos"]
        usable = np.flatnonzero(~bad_rows & ~np.isin(np.arange(len(parsed)), list(extra)))
        mask, reasons = implausible_mos(mos[usable])
        for position in np.flatnonzero(mask):
            extra.setdefault(int(usable[position]), []).append(("mos", reasons[position]))
    return extra


def _range_from_data(parsed, info: IQADatasetInfo, source: str) -> IQADatasetInfo:
    """`info` with the MOS range of the kept rows."""
    values = parsed.with_format("numpy")["mos"]
    if len(values) == 0:
        raise ValueError(f"{source}: no valid rows, cannot infer the MOS range.")
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        raise ValueError(f"{source}: every MOS equals {lo}; pass mos_range=(low, high) to set the native range.")
    return replace(info, mos_min=lo, mos_max=hi)


def finalize_dataset(
    raw: datasets.Dataset,
    info: IQADatasetInfo,
    *,
    source: str,
    root: Path | None = None,
    mos_range: tuple | None = None,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
    num_proc: int | None = None,
    earlier_problems: Sequence[BadSample] = (),
    description: str = "",
    path_field: str = "file_name",
) -> datasets.Dataset:
    """
    Check the raw rows of a loader (see the module docstring) and return the dataset in the library's layout.

    `info` gives the facts; its `mos_min`/`mos_max` are replaced by the range inferred from the good rows when
    `mos_range` is None and `info.mos_range_from_data` is True. `earlier_problems` are rows the loader could not
    even read into the raw table (wrong column count, ...); they are reported with the others. `path_field` names
    the image-path column of the source in messages.
    """
    parsed, image_is_path = _parse_rows(
        raw,
        root=root,
        mos_range=mos_range,
        check_files=check_files,
        verify_images=verify_images,
        num_proc=num_proc,
        path_field=path_field,
    )
    files = parsed.data.column("source_file").to_pylist()
    lines = parsed.data.column("source_line").to_numpy()
    bad_rows = pc.list_value_length(parsed.data.column("problems")).to_numpy(zero_copy_only=False) > 0
    range_from_data = mos_range is None and info.mos_range_from_data
    extra = _cross_row_problems(parsed, image_is_path, bad_rows, lines, range_from_data, path_field)

    bad: list[BadSample] = list(earlier_problems)
    for i in np.flatnonzero(bad_rows):
        for problem in parsed[int(i)]["problems"]:
            bad.append(BadSample(files[i], int(lines[i]), problem["field"], problem["reason"]))
    for i, problems in extra.items():
        bad.extend(BadSample(files[i], int(lines[i]), field, reason) for field, reason in problems)
    bad.sort(key=lambda b: (b.file, b.line))
    num_bad = len({(b.file, b.line) for b in bad})
    if bad and not skip_bad_samples:
        raise ValueError(
            f"{num_bad} bad sample(s) in {source} (pass skip_bad_samples=True, or --skip_bad_samples to the "
            "scripts, to leave them out):\n" + format_problems(bad)
        )
    if bad:
        message = f"Skipped {num_bad} bad sample(s) while loading {source}:\n" + format_problems(bad)
        warnings.warn(message, stacklevel=4)
        keep = np.flatnonzero(~bad_rows & ~np.isin(np.arange(len(parsed)), list(extra)))
        parsed = parsed.select(keep)

    if range_from_data:
        info = _range_from_data(parsed, info, source)
    if len(parsed) == 0:
        raise ValueError(f"{source}: no valid rows.")
    features = iqa_features()
    out = parsed.map(
        _normalize_batch,
        batched=True,
        fn_kwargs=dict(lo=info.mos_min, hi=info.mos_max, higher_is_better=info.higher_is_better),
        desc="Normalising MOS",
    )
    out = out.select_columns(list(features)).cast(features)
    return with_iqa_info(out, replace(info, skipped=tuple(bad)), description)


def resolve_mos_range(mos_range, source) -> tuple[float, float] | None:
    if mos_range is None:
        return None
    lo, hi = float(mos_range[0]), float(mos_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"{source}: mos_range must be (low, high) with low < high, got {mos_range!r}")
    return lo, hi
