"""Tests of mpiqe_hf.data: LIQE label files, official layouts (tiny fakes), folders, Hub-style datasets, the
synthetic set and the split helpers. No network; images are generated in tmp_path."""

import csv
import hashlib
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from mpiqe_hf.configuration_mpiqe import DISTORTION_CLASSES, SCENE_CLASSES
from mpiqe_hf.data import (
    IQA_DATASETS,
    dataset_mos_range,
    get_dataset_spec,
    iqa_info,
    liqe_splits,
    load_iqa_dataset,
    paper_splits,
    skipped_samples,
    splits_by_content,
    subsample,
)
from mpiqe_hf.data.synthetic import FAMILY_WEIGHTS, REFERENCES, pseudo_mos


LIQE_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "liqe" / "IQA_Database"
if not LIQE_ROOT.is_dir():
    LIQE_ROOT = Path("/work/shared/data/liqe/IQA_Database")
needs_liqe = pytest.mark.skipif(not LIQE_ROOT.is_dir(), reason="LIQE label files not available")

COLUMNS = ["image", "mos", "mos_normalized", "scene", "distortion", "content_id"]


def make_image(path, size=(8, 6), color=(120, 30, 200), fmt=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def count_lines(path):
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def labels(ds):
    """The non-image columns (no decoding), with the ClassLabel ints turned back into names (None for no label)."""
    scenes, distortions = ds.features["scene"].feature, ds.features["distortion"]
    rows = ds.select_columns([c for c in COLUMNS if c != "image"]).to_list()
    for row in rows:
        row["scene"] = scenes.int2str(row["scene"])
        row["distortion"] = distortions.int2str(row["distortion"]) if row["distortion"] >= 0 else None
    return rows


def image_paths(ds):
    return [d["path"] for d in ds.cast_column("image", datasets.Image(decode=False))["image"]]


# --------------------------------------------------------------------------------------------------------------
# specs


def test_dataset_specs():
    assert set(IQA_DATASETS) == {
        "koniq10k",
        "kadid10k",
        "live",
        "csiq",
        "livec",
        "bid",
        "spaq",
        "agiqa3k",
        "synthetic",
    }
    for name in ("live", "csiq"):
        assert get_dataset_spec(name).score_loss_weight == 0.1
    for name in ("koniq10k", "kadid10k", "livec", "bid", "synthetic"):
        assert get_dataset_spec(name).score_loss_weight == 0.5
    for name in ("live", "csiq", "bid"):
        assert get_dataset_spec(name).batch_size == 32
    for name in ("koniq10k", "kadid10k", "livec", "synthetic"):
        assert get_dataset_spec(name).batch_size == 64
    assert get_dataset_spec("live").higher_is_better is False
    assert (get_dataset_spec("koniq10k").mos_min, get_dataset_spec("koniq10k").mos_max) == (1.0, 5.0)
    assert (get_dataset_spec("livec").mos_min, get_dataset_spec("livec").mos_max) == (0.0, 100.0)
    assert (get_dataset_spec("bid").mos_min, get_dataset_spec("bid").mos_max) == (0.0, 5.0)
    assert get_dataset_spec("KonIQ-10k").name == "koniq10k"
    assert {n for n, s in IQA_DATASETS.items() if s.synthetic} == {"kadid10k", "live", "csiq", "synthetic"}
    with pytest.raises(ValueError, match="Unknown IQA dataset"):
        get_dataset_spec("tid2013")


def test_max_image_size_defaults_per_dataset(tmp_path):
    """KonIQ-10k at DEIQT's 512x384, BID at LIQE's shorter side of 768 (1024x768 for its 4:3 frames), others native;
    `DataArguments.resolved_max_image_size` is what the transforms get."""
    from transformers import HfArgumentParser

    from mpiqe_hf.data import default_max_image_size
    from mpiqe_hf.training import DataArguments

    assert {n: s.max_image_size for n, s in IQA_DATASETS.items()} == {
        "koniq10k": 512,
        "kadid10k": None,
        "live": None,
        "csiq": None,
        "livec": None,
        "bid": 1024,
        "spaq": 683,
        "agiqa3k": None,
        "synthetic": None,
    }
    assert default_max_image_size("KonIQ-10k") == 512 and default_max_image_size(None) is None
    assert default_max_image_size("org/hub-dataset") is None
    (tmp_path / "bid").mkdir()
    assert default_max_image_size(str(tmp_path / "bid")) is None  # a folder, not the named dataset

    def resolved(*args):
        (data_args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(list(args))
        return data_args.resolved_max_image_size

    assert resolved("--dataset_name", "bid", "--data_dir", "/data/BID") == 1024
    assert resolved("--dataset_name", "koniq", "--data_dir", "/data/koniq") == 512
    assert resolved("--dataset_name", "live", "--data_dir", "/data/live") is None
    assert resolved() is None  # the embedded synthetic set
    assert resolved("--train_dir", str(tmp_path)) is None
    assert resolved("--dataset_name", "bid", "--max_image_size", "2048") == 2048
    assert resolved("--dataset_name", "bid", "--max_image_size", "0") is None  # 0: never downscale
    assert resolved("--dataset_name", "livec", "--max_image_size", "300") == 300
    with pytest.raises(ValueError, match="--max_image_size must be a number of pixels or 0"):
        DataArguments(dataset_name="bid", max_image_size=-1)


# --------------------------------------------------------------------------------------------------------------
# LIQE label files


@needs_liqe
@pytest.mark.parametrize(
    "name, rel", [("koniq10k", "koniq-10k/splits2/koniq10k_all_clip.txt"), ("csiq", "CSIQ/splits2/csiq_all_clip.txt")]
)
def test_liqe_real_label_files(name, rel):
    label_file = LIQE_ROOT / rel
    ds = load_iqa_dataset(name, label_file=label_file, check_files=False)
    assert len(ds) == count_lines(label_file)
    assert ds.column_names == COLUMNS
    rows = labels(ds)
    assert {r["distortion"] for r in rows} <= set(DISTORTION_CLASSES)
    assert {s for r in rows for s in r["scene"]} <= set(SCENE_CLASSES)
    assert all(r["scene"] for r in rows)
    assert all(0.0 <= r["mos_normalized"] <= 1.0 for r in rows)
    if name == "csiq":
        assert len({r["content_id"] for r in rows}) == 30
        assert rows[0]["content_id"] == "shroom" and rows[0]["distortion"] == "noise"
        assert rows[0]["mos_normalized"] == pytest.approx(rows[0]["mos"])
    else:
        assert len({r["content_id"] for r in rows}) == len(rows)
        assert rows[0]["distortion"] == "overexposure" and rows[0]["scene"] == ["human"]
        assert rows[0]["mos_normalized"] == pytest.approx((3.349057 - 1) / 4)
    assert dataset_mos_range(ds) == (
        get_dataset_spec(name).mos_min,
        get_dataset_spec(name).mos_max,
        get_dataset_spec(name).higher_is_better,
    )


@needs_liqe
def test_liqe_live_is_dmos_and_kadid_folder():
    live = load_iqa_dataset(
        "live", label_file=LIQE_ROOT / "databaserelease2/splits2/live_all_clip.txt", check_files=False
    )
    rows = labels(live)
    worst = max(rows, key=lambda r: r["mos"])
    best = min(rows, key=lambda r: r["mos"])
    assert worst["mos_normalized"] < best["mos_normalized"]  # DMOS: lower is better
    # KADID ships no _all_clip.txt: the database folder resolves to the union of split 1.
    kadid = load_iqa_dataset("kadid10k", label_file=LIQE_ROOT / "kadid10k", check_files=False)
    assert len(kadid) == 10125
    assert len(kadid.unique("content_id")) == 81 and "I32" in kadid.unique("content_id")


@needs_liqe
@pytest.mark.parametrize("name, rel", [("koniq10k", "koniq-10k"), ("csiq", "CSIQ")])
def test_liqe_splits_partition(name, rel):
    ds = load_iqa_dataset(name, label_file=LIQE_ROOT / rel, check_files=False)
    for where in (LIQE_ROOT / rel, LIQE_ROOT / rel / "splits2" / "1", name):
        splits = liqe_splits(where, 1, ds)
        train, val, test = (set(splits[s]) for s in ("train", "val", "test"))
        assert len(train) == len(splits["train"]) and len(test) == len(splits["test"])
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(range(len(ds)))
        assert len(splits["test"]) == count_lines(
            LIQE_ROOT / rel / "splits2/1" / f"{get_dataset_spec(name).liqe_prefix}_test_clip.txt"
        )


def write_liqe(path, lines):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(fields) + "\n" for fields in lines))
    return path


def test_liqe_with_images_and_content_ids(tmp_path):
    root = tmp_path / "kadid10k"
    for name in ("I01_01_01.png", "I01_09_02.png", "I02_21_05.png"):
        make_image(root / "images" / name)
    label = write_liqe(
        tmp_path / "kadid10k_all_clip.txt",
        [
            ["images/I01_01_01.png", "4.5", "gaussian blur", "animal", "invalid", "invalid"],
            ["images/I01_09_02.png", "3.0", "jpeg2000 compression", "still-life", "plant", "invalid"],
            ["images/I02_21_05.png", "1.0", "pixelate", "landscape", "invalid", "invalid"],
        ],
    )
    ds = load_iqa_dataset("kadid10k", data_dir=root, label_file=label, verify_images=True)
    rows = labels(ds)
    assert [r["content_id"] for r in rows] == ["I01", "I01", "I02"]
    assert [r["distortion"] for r in rows] == ["blur", "jpeg2000 compression", "spatial"]
    assert rows[1]["scene"] == ["still_life", "plant"]
    assert [r["mos_normalized"] for r in rows] == pytest.approx([0.875, 0.5, 0.0])
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in image_paths(ds))
    assert ds[0]["image"].size == (8, 6)


@pytest.mark.parametrize(
    "fields, field",
    [
        (["images/I01_01_02.png", "4.5", "gaussian blur", "animal", "invalid"], "columns"),
        (["images/I01_01_02.png", "nan", "gaussian blur", "animal", "invalid", "invalid"], "mos"),
        (["images/I01_01_02.png", "7.5", "gaussian blur", "animal", "invalid", "invalid"], "mos"),
        (["images/I01_01_02.png", "abc", "gaussian blur", "animal", "invalid", "invalid"], "mos"),
        (["images/I01_01_02.png", "4.5", "gaussian blur", "spaceship", "invalid", "invalid"], "scene"),
        (["images/I01_01_02.png", "4.5", "bokeh", "animal", "invalid", "invalid"], "distortion"),
        (["images/missing.png", "4.5", "gaussian blur", "animal", "invalid", "invalid"], "image"),
        (["images/I01_01_01.png", "4.5", "gaussian blur", "animal", "invalid", "invalid"], "path"),
    ],
)
def test_liqe_bad_rows(tmp_path, fields, field):
    root = tmp_path / "db"
    make_image(root / "images" / "I01_01_01.png")
    make_image(root / "images" / "I01_01_02.png")
    good = ["images/I01_01_01.png", "4.0", "gaussian blur", "animal", "invalid", "invalid"]
    label = write_liqe(tmp_path / "kadid10k_all_clip.txt", [good, fields])
    with pytest.raises(ValueError) as info:
        load_iqa_dataset("kadid10k", data_dir=root, label_file=label)
    message = str(info.value)
    assert str(label) in message and "line 2" in message and f"'{field}'" in message
    with pytest.warns(UserWarning, match="Skipped 1 bad sample"):
        ds = load_iqa_dataset("kadid10k", data_dir=root, label_file=label, skip_bad_samples=True)
    assert len(ds) == 1
    bad = skipped_samples(ds)
    assert len(bad) == 1 and bad[0].line == 2 and bad[0].field == field and bad[0].file == str(label)


def test_unreadable_image(tmp_path):
    root = tmp_path / "db"
    make_image(root / "images" / "I01_01_01.png")
    (root / "images" / "I01_01_02.png").write_bytes(b"not an image at all")
    label = write_liqe(
        tmp_path / "kadid10k_all_clip.txt",
        [
            ["images/I01_01_01.png", "4.0", "gaussian blur", "animal", "invalid", "invalid"],
            ["images/I01_01_02.png", "3.0", "gaussian blur", "animal", "invalid", "invalid"],
        ],
    )
    assert len(load_iqa_dataset("kadid10k", data_dir=root, label_file=label)) == 2  # decoding is lazy by default
    with pytest.raises(ValueError, match=r"line 2, field 'image': Cannot load .*I01_01_02.png"):
        load_iqa_dataset("kadid10k", data_dir=root, label_file=label, verify_images=True)
    with pytest.warns(UserWarning):
        ds = load_iqa_dataset("kadid10k", data_dir=root, label_file=label, verify_images=True, skip_bad_samples=True)
    assert len(ds) == 1


# --------------------------------------------------------------------------------------------------------------
# official layouts (tiny fakes)


def test_official_koniq(tmp_path):
    root = tmp_path / "koniq10k"
    names = ["1001.jpg", "1002.jpg", "1003.jpg"]
    for n in names:
        make_image(root / "1024x768" / n, fmt="JPEG")
    with open(root / "koniq10k_scores_and_distributions.csv", "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"])
        for n, mos in zip(names, (3.2, 1.5, 4.1)):
            w.writerow([n, 0, 1, 2, 3, 4, 10, mos, 0.5, 50.0])
    ds = load_iqa_dataset("koniq10k", data_dir=root)
    rows = labels(ds)
    assert [r["mos"] for r in rows] == [3.2, 1.5, 4.1]
    assert rows[0]["distortion"] is None and rows[0]["scene"] == [] and rows[0]["content_id"] == "1001.jpg"
    assert ds[2]["image"].size == (8, 6)
    os.remove(root / "1024x768" / "1002.jpg")
    with pytest.raises(ValueError, match=r"koniq10k_scores_and_distributions.csv, line 3, field 'image'"):
        load_iqa_dataset("koniq10k", data_dir=root)


def test_official_kadid(tmp_path):
    root = tmp_path / "kadid"
    rows = [("I01_03_02.png", "I01.png", 3.5), ("I01_16_05.png", "I01.png", 2.0), ("I02_25_01.png", "I02.png", 4.8)]
    with open(root.joinpath("dmos.csv") if root.mkdir() is None else None, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dist_img", "ref_img", "dmos", "var"])
        for d, r, m in rows:
            make_image(root / "images" / d)
            w.writerow([d, r, m, 0.1])
    ds = load_iqa_dataset("kadid10k", data_dir=root)
    got = labels(ds)
    assert [r["distortion"] for r in got] == ["blur", "overexposure", "contrast"]
    assert [r["content_id"] for r in got] == ["I01", "I01", "I02"]
    assert [r["mos_normalized"] for r in got] == pytest.approx([0.625, 0.25, 0.95])


def _live_fake(root: Path):
    folders = [("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174)]
    total = sum(n for _, n in folders)
    dmos = np.zeros((1, total))
    orgs = np.ones((1, total))
    refs = np.empty((1, total), dtype=object)
    refs[0, :] = "parrots.bmp"
    picks = {
        0: ("jp2k", 1, "bikes.bmp", 40.0),
        228: ("jpeg", 2, "bikes.bmp", 70.0),
        460: ("wn", 1, "parrots.bmp", 10.0),
        808: ("fastfading", 1, "house.bmp", 100.0),
    }
    for i, (folder, j, ref, value) in picks.items():
        orgs[0, i] = 0
        dmos[0, i] = value
        refs[0, i] = ref
        make_image(root / folder / f"img{j}.bmp", fmt="BMP")
    savemat(root / "dmos_realigned.mat", {"dmos_new": dmos, "orgs": orgs, "dmos_std": np.ones((1, total))})
    savemat(root / "refnames_all.mat", {"refnames_all": refs})
    return picks


def test_official_live(tmp_path):
    root = tmp_path / "databaserelease2"
    root.mkdir()
    _live_fake(root)
    ds = load_iqa_dataset("live", data_dir=root)
    rows = labels(ds)
    assert [r["mos"] for r in rows] == [40.0, 70.0, 10.0, 100.0]
    assert [r["distortion"] for r in rows] == [
        "jpeg2000 compression",
        "jpeg compression",
        "noise",
        "jpeg2000 compression",
    ]
    assert [r["content_id"] for r in rows] == ["bikes", "bikes", "parrots", "house"]
    assert rows[2]["mos_normalized"] > rows[0]["mos_normalized"] > rows[3]["mos_normalized"]
    assert [os.path.relpath(p, root) for p in image_paths(ds)] == [
        "jp2k/img1.bmp",
        "jpeg/img2.bmp",
        "wn/img1.bmp",
        "fastfading/img1.bmp",
    ]
    # the LIQE loader finds LIVE's references through refnames_all.mat in data_dir
    label = write_liqe(
        tmp_path / "live_all_clip.txt",
        [
            ["jp2k/img1.bmp", "40.0", "jpeg2000 compression", "human", "invalid", "invalid"],
            ["wn/img1.bmp", "10.0", "white noise", "animal", "invalid", "invalid"],
        ],
    )
    liqe = load_iqa_dataset("live", data_dir=root, label_file=label)
    assert liqe["content_id"] == ["bikes", "parrots"]
    assert iqa_info(liqe).live_references_found is True


def _live_info_txt(root: Path, picks, folders=("jp2k", "jpeg", "wn", "gblur", "fastfading")):
    """The release's per-folder `info.txt` (reference, image, distortion parameter) for the picked entries."""
    for folder in folders:
        lines = [f"{ref} img{j}.bmp 1.0" for f, j, ref, _ in picks.values() if f == folder]
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "info.txt").write_text("\n".join(lines) + "\n")


def test_live_without_reference_names_is_refused(tmp_path):
    root = tmp_path / "databaserelease2"
    root.mkdir()
    picks = _live_fake(root)
    (root / "refnames_all.mat").unlink()
    label = write_liqe(
        tmp_path / "live_all_clip.txt",
        [
            ["jp2k/img1.bmp", "40.0", "jpeg2000 compression", "human", "invalid", "invalid"],
        ],
    )
    for kwargs in ({}, {"label_file": label}):
        with pytest.raises(ValueError) as info:
            load_iqa_dataset("live", data_dir=root, **kwargs)
        message = str(info.value)
        assert f"{root / 'refnames_all.mat'} not found" in message
        assert all(str(root / f / "info.txt") in message for f in ("jp2k", "jpeg", "wn", "gblur", "fastfading"))
        assert "leak" in message
    # one info.txt missing: that file is named, the others are not
    _live_info_txt(root, picks, folders=("jp2k", "jpeg", "wn", "gblur"))
    with pytest.raises(ValueError, match="fastfading") as info:
        load_iqa_dataset("live", data_dir=root)
    assert str(root / "jp2k" / "info.txt") not in str(info.value)
    # a refnames_all.mat of the wrong length does not count as found
    savemat(root / "refnames_all.mat", {"refnames_all": np.array([["bikes.bmp"]], dtype=object)})
    with pytest.raises(ValueError, match="holds 1 reference names, expected 982"):
        load_iqa_dataset("live", data_dir=root)
    # all five info.txt files: the references come from them
    _live_info_txt(root, picks)
    assert load_iqa_dataset("live", data_dir=root)["content_id"] == ["bikes", "bikes", "parrots", "house"]
    # an image that info.txt does not list is a bad row, not a content of its own
    (root / "wn" / "info.txt").write_text("")
    with pytest.raises(ValueError, match=r"line 461, field 'content_id': wn/img1.bmp is not listed in wn/info.txt"):
        load_iqa_dataset("live", data_dir=root)


def test_live_liqe_rows_need_a_reference(tmp_path):
    root = tmp_path / "databaserelease2"
    root.mkdir()
    _live_fake(root)
    make_image(root / "refimgs" / "bikes.bmp", fmt="BMP")
    label = write_liqe(
        tmp_path / "live_all_clip.txt",
        [
            ["jp2k/img1.bmp", "40.0", "jpeg2000 compression", "human", "invalid", "invalid"],
            ["refimgs/bikes.bmp", "0.0", "jpeg2000 compression", "human", "invalid", "invalid"],
        ],
    )
    with pytest.raises(ValueError, match=r"line 2, field 'path': refimgs/bikes.bmp is not an image of the LIVE"):
        load_iqa_dataset("live", data_dir=root, label_file=label)
    # LIQE's LIVE labels without data_dir (no reference names) load, but cannot be split by content
    labels_only = load_iqa_dataset("live", label_file=label, check_files=False)
    assert iqa_info(labels_only).live_references_found is False
    with pytest.raises(ValueError, match="without its reference names"):
        paper_splits(labels_only)
    assert len(paper_splits(labels_only, num_repetitions=1, by_content=False)) == 1


def test_live_score_direction_follows_dmos_realigned(tmp_path):
    """`mos` is dmos_realigned.mat's DMOS (lower = better), so the image with the lower DMOS scores higher."""
    from scipy.io import loadmat

    root = tmp_path / "databaserelease2"
    root.mkdir()
    picks = _live_fake(root)
    dmos_new = loadmat(root / "dmos_realigned.mat")["dmos_new"].reshape(-1)
    # the unrealigned dmos.mat next to it, with other values, is not read while dmos_realigned.mat is there
    savemat(
        root / "dmos.mat", {"dmos": 120.0 - dmos_new[None, :], "orgs": loadmat(root / "dmos_realigned.mat")["orgs"]}
    )
    entry_of = {f"{folder}/img{j}.bmp": i for i, (folder, j, _, _) in picks.items()}
    ds = load_iqa_dataset("live", data_dir=root)
    assert iqa_info(ds).score_file.endswith("dmos_realigned.mat")
    rows = [
        (dmos_new[entry_of[os.path.relpath(p, root)]], r["mos"], r["mos_normalized"])
        for p, r in zip(image_paths(ds), labels(ds))
    ]
    assert len(rows) == 4 and len({d for d, _, _ in rows}) == 4
    for dmos, mos, normalized in rows:
        assert mos == dmos and normalized == pytest.approx((120.0 - dmos) / 120.0)
    for a in rows:
        for b in rows:
            if a[0] < b[0]:
                assert a[2] > b[2]  # lower DMOS = better = higher mos_normalized
    assert dataset_mos_range(ds) == (0.0, 120.0, False)
    # live_realigned=False reads dmos.mat (here reversed), and the direction follows that file instead
    old = load_iqa_dataset("live", data_dir=root, live_realigned=False)
    assert iqa_info(old).score_file.endswith("dmos.mat")
    assert old["mos"] == pytest.approx([120.0 - m for m in ds["mos"]])


def test_official_csiq(tmp_path):
    root = tmp_path / "CSIQ"
    root.mkdir()
    table = [("shroom", 1, "noise", 1, 0.031), ("1600", 5, "blur", 3, 0.4), ("shroom", 6, "contrast", 2, 0.2)]
    with open(root / "csiq.DMOS.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"])
        for image, idx, kind, lev, dmos in table:
            w.writerow([image, idx, kind, lev, 0.01, dmos])
    make_image(root / "dst_imgs/awgn/shroom.AWGN.1.png")
    make_image(root / "dst_imgs/blur/1600.BLUR.3.png")
    make_image(root / "dst_imgs/contrast/shroom.contrast.2.png")
    ds = load_iqa_dataset("csiq", data_dir=root)
    rows = labels(ds)
    assert [r["mos"] for r in rows] == pytest.approx([0.969, 0.6, 0.8])  # stored as 1 - DMOS, like LIQE's files
    assert [r["distortion"] for r in rows] == ["noise", "blur", "contrast"]
    assert [r["content_id"] for r in rows] == ["shroom", "1600", "shroom"]


def test_official_livec(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    names = ["t1.bmp", "t2.bmp", "10.bmp", "11.JPG", "12.bmp"]
    mos = [50.0, 60.0, 30.5, 80.25, 5.0]
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = n
    (root / "Data").mkdir(parents=True)
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([mos])})
    for n in names[2:]:
        make_image(root / "Images" / n, fmt="JPEG" if n.endswith("JPG") else "BMP")
    ds = load_iqa_dataset("livec", data_dir=root)
    rows = labels(ds)
    assert [r["content_id"] for r in rows] == ["10.bmp", "11.JPG", "12.bmp"]  # training images t*.bmp left out
    assert [r["mos_normalized"] for r in rows] == pytest.approx([0.305, 0.8025, 0.05])


def test_official_bid(tmp_path):
    root = tmp_path / "BID"
    with open(make_image(root / "ImageDatabase" / "DatabaseImage0001.JPG", fmt="JPEG").parent / "x", "w"):
        pass
    make_image(root / "ImageDatabase" / "DatabaseImage0012.JPG", fmt="JPEG")
    with open(root / "DatabaseGrades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Number", "Average Subjective Grade"])
        w.writerow([1, 3.5])
        w.writerow([12, 0.4])
    ds = load_iqa_dataset("bid", data_dir=root)
    assert [r["mos"] for r in labels(ds)] == [3.5, 0.4]
    assert ds["content_id"] == ["DatabaseImage0001.JPG", "DatabaseImage0012.JPG"]
    with open(root / "DatabaseGrades.csv", "a", newline="") as f:
        csv.writer(f).writerow([13, 9.0])
    with pytest.raises(ValueError, match=r"DatabaseGrades.csv, line 4, field 'mos'.*outside"):
        load_iqa_dataset("bid", data_dir=root)


# --------------------------------------------------------------------------------------------------------------
# metadata.csv folder and Hub-style datasets


def write_metadata(folder, rows, header=("file_name", "mos", "scene", "distortion")):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_metadata_folder(tmp_path):
    folder = tmp_path / "my_iqa"
    for n in ("a.png", "sub/b.png", "c.png"):
        make_image(folder / n)
    write_metadata(
        folder,
        [("a.png", 7, "animal|plant", "blur"), ("sub/b.png", 2, "", ""), ("c.png", 9.5, "night", "white noise")],
    )
    ds = load_iqa_dataset(str(folder))
    rows = labels(ds)
    assert ds.column_names == COLUMNS
    assert rows[0]["scene"] == ["animal", "plant"] and rows[1]["scene"] == [] and rows[1]["distortion"] is None
    assert rows[2]["distortion"] == "noise"
    assert dataset_mos_range(ds) == (2.0, 9.5, True)  # from the data
    assert [r["mos_normalized"] for r in rows] == pytest.approx([5 / 7.5, 0.0, 1.0])
    ds = load_iqa_dataset(str(folder), mos_range=(0, 10), higher_is_better=False)
    assert dataset_mos_range(ds) == (0.0, 10.0, False)
    assert [r["mos_normalized"] for r in labels(ds)] == pytest.approx([0.3, 0.8, 0.05])
    with pytest.raises(ValueError, match=r"metadata.csv, line 4, field 'mos'.*outside"):
        load_iqa_dataset(str(folder), mos_range=(0, 9))


@pytest.mark.parametrize("missing", ["file_name", "mos"])
def test_metadata_missing_column(tmp_path, missing):
    folder = tmp_path / "f"
    make_image(folder / "a.png")
    header = [c for c in ("file_name", "mos") if c != missing] + ["scene"]
    write_metadata(folder, [("a.png", "animal")], header=header)
    with pytest.raises(ValueError, match=rf"metadata.csv, line 1, field '{missing}'"):
        load_iqa_dataset(str(folder))


@pytest.mark.parametrize(
    "row, field",
    [
        (("a.png", "nan", "", ""), "mos"),
        (("gone.png", 3, "", ""), "image"),
        (("a.png", 3, "animal;moon", ""), "scene"),
        (("a.png", 3, "", "sparkles"), "distortion"),
    ],
)
def test_metadata_bad_rows(tmp_path, row, field):
    folder = tmp_path / "f"
    for name in ("a.png", "b.png", "c.png"):
        make_image(folder / name)
    write_metadata(folder, [("b.png", 1, "", ""), ("c.png", 4, "", ""), row])
    with pytest.raises(ValueError, match=rf"metadata.csv, line 4, field '{field}'"):
        load_iqa_dataset(str(folder))
    with pytest.warns(UserWarning):
        ds = load_iqa_dataset(str(folder), skip_bad_samples=True)
    assert len(ds) == 2 and skipped_samples(ds)[0].line == 4


def test_saved_dataset_with_image_and_mos(tmp_path):
    paths = [str(make_image(tmp_path / "img" / f"{i}.png", color=(i * 40, 0, 0))) for i in range(4)]
    raw = datasets.Dataset.from_dict(
        {"picture": paths, "score": [10.0, 20.0, 30.0, 40.0], "scene": [["animal"], [], ["night", "human"], []]}
    ).cast_column("picture", datasets.Image())
    raw.save_to_disk(str(tmp_path / "saved"))
    ds = load_iqa_dataset(str(tmp_path / "saved"), image_column="picture", mos_column="score", mos_range=(0, 50))
    assert ds.column_names == COLUMNS and len(ds) == 4
    rows = labels(ds)
    assert [r["mos_normalized"] for r in rows] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert rows[2]["scene"] == ["night", "human"] and rows[0]["distortion"] is None
    assert rows[1]["content_id"] == "1.png"  # save_to_disk embeds the bytes and keeps the base name
    assert ds[3]["image"].getpixel((0, 0)) == (120, 0, 0)
    assert dataset_mos_range(ds) == (0.0, 50.0, True)
    dd = datasets.DatasetDict({"train": raw, "test": raw.select([0, 1])})
    dd.save_to_disk(str(tmp_path / "saved_dict"))
    test = load_iqa_dataset(str(tmp_path / "saved_dict"), split="test", image_column="picture", mos_column="score")
    assert len(test) == 2 and dataset_mos_range(test) == (10.0, 20.0, True)
    with pytest.raises(ValueError, match="field 'mos'"):
        load_iqa_dataset(str(tmp_path / "saved"), image_column="picture")


# --------------------------------------------------------------------------------------------------------------
# splits


def test_paper_splits_by_content_and_reproducible():
    content = [f"ref{i // 5}" for i in range(50)]  # 10 contents x 5 distortions
    ds = datasets.Dataset.from_dict({"content_id": content})
    splits = paper_splits(ds, num_repetitions=10, seed=3)
    assert len(splits) == 10
    for train, test in splits:
        assert set(train).isdisjoint(test) and sorted(train + test) == list(range(50))
        assert {content[i] for i in train}.isdisjoint({content[i] for i in test})
        assert len({content[i] for i in train}) == 8
    assert splits == paper_splits(ds, num_repetitions=10, seed=3)
    assert splits[:3] == paper_splits(ds, num_repetitions=3, seed=3)
    assert splits != paper_splits(ds, num_repetitions=10, seed=4)
    assert len({tuple(t) for t, _ in splits}) > 1
    authentic = datasets.Dataset.from_dict({"content_id": [str(i) for i in range(50)]})
    train, test = paper_splits(authentic, num_repetitions=1)[0]
    assert len(train) == 40 and len(test) == 10
    assert splits_by_content(ds) and not splits_by_content(authentic)
    mixed = paper_splits(ds, num_repetitions=1, by_content=False)[0]
    assert len(mixed[0]) == 40


def test_subsample():
    indices = list(range(100, 200))
    s20, s40, s60 = (subsample(indices, f, seed=1) for f in (0.2, 0.4, 0.6))
    assert (len(s20), len(s40), len(s60)) == (20, 40, 60)
    assert set(s20) <= set(s40) <= set(s60) <= set(indices)
    assert s20 == subsample(indices, 0.2, seed=1) and s20 != subsample(indices, 0.2, seed=2)
    with pytest.raises(ValueError):
        subsample(indices, 0.0)


# --------------------------------------------------------------------------------------------------------------
# synthetic


def _hashes(folder):
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_synthetic_build_reproducible(tmp_path):
    ds = load_iqa_dataset("synthetic", cache_dir=tmp_path / "a", seed=0)
    n_refs = len(REFERENCES)
    assert len(ds) == n_refs * (1 + len(DISTORTION_CLASSES) * 5)
    assert ds.column_names == COLUMNS
    rows = labels(ds)
    assert {r["distortion"] for r in rows} == set(DISTORTION_CLASSES) | {None}
    assert {r["content_id"] for r in rows} == set(REFERENCES)
    assert {s for r in rows for s in r["scene"]} <= set(SCENE_CLASSES)
    refs = [r for r in rows if r["distortion"] is None]
    assert len(refs) == n_refs and all(r["mos"] == 5.0 and r["mos_normalized"] == 1.0 for r in refs)
    assert min(r["mos"] for r in rows) >= 1.0
    info = iqa_info(ds)
    assert info.split_protocol == "by_content" and info.name == "synthetic" and info.seed == 0
    img = ds[1]["image"]
    assert min(img.size) == 256
    folder = tmp_path / "a" / "synthetic" / "v1-0"
    assert folder.is_dir() and not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    from mpiqe_hf.data import build_synthetic

    other = build_synthetic(tmp_path / "b", seed=0)
    assert _hashes(folder) == _hashes(other)
    # already built: reused, not rebuilt
    stamp = os.path.getmtime(folder / "metadata.csv")
    assert build_synthetic(tmp_path / "a", seed=0) == folder and os.path.getmtime(folder / "metadata.csv") == stamp
    splits = paper_splits(ds, num_repetitions=2)
    for train, test in splits:
        assert {rows[i]["content_id"] for i in train}.isdisjoint({rows[i]["content_id"] for i in test})


def test_synthetic_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    from mpiqe_hf.data import synthetic

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "distort", boom)
    with pytest.raises(KeyboardInterrupt):
        synthetic.build_synthetic(tmp_path, seed=5)
    assert list((tmp_path / "synthetic").iterdir()) == []


def test_pseudo_mos():
    assert pseudo_mos(None, 0) == 5.0
    assert pseudo_mos("blur", 5) == pytest.approx(1 + 4 / 6)
    assert pseudo_mos("color", 3) == pytest.approx(1 + 4 * (1 - 0.6 * 3 / 6))
    assert set(FAMILY_WEIGHTS) == set(DISTORTION_CLASSES)


# --------------------------------------------------------------------------------------------------------------
# API: export, features, IQADatasetInfo


def small_folder(folder, rows=None, header=("file_name", "mos", "scene", "distortion", "content_id")):
    rows = rows or [
        ("a.png", 4.0, "animal|plant", "gaussian blur", "r1"),
        ("b.png", 2.0, "", "", "r1"),
        ("c.png", 3.0, "night", "jpeg compression", "r2"),
        ("d.png", 1.0, "human", "", "r2"),
    ]
    for row in rows:
        make_image(folder / row[0], color=(int(row[1] * 40), 10, 10))
    write_metadata(folder, rows, header=header)
    return folder


def test_top_level_export():
    import subprocess
    import sys

    import mpiqe_hf

    # the export is lazy: importing the package for scoring does not import `datasets`
    code = "import sys, mpiqe_hf; assert 'datasets' not in sys.modules; from mpiqe_hf import load_iqa_dataset"
    subprocess.run([sys.executable, "-c", code], check=True)
    from mpiqe_hf import IQADatasetInfo as Exported
    from mpiqe_hf import iqa_info as exported_info
    from mpiqe_hf import load_iqa_dataset as exported

    assert exported is load_iqa_dataset and exported_info is iqa_info
    assert {"load_iqa_dataset", "iqa_info", "IQADatasetInfo"} <= set(mpiqe_hf.__all__)
    assert Exported.__name__ == "IQADatasetInfo"


def test_class_label_features(tmp_path):
    ds = load_iqa_dataset(str(small_folder(tmp_path / "f")))
    scene, distortion = ds.features["scene"], ds.features["distortion"]
    assert isinstance(scene, datasets.List) and isinstance(scene.feature, datasets.ClassLabel)
    assert scene.feature.names == list(SCENE_CLASSES)
    assert isinstance(distortion, datasets.ClassLabel) and distortion.names == list(DISTORTION_CLASSES)
    assert ds["scene"][:2] == [[SCENE_CLASSES.index("animal"), SCENE_CLASSES.index("plant")], []]
    assert ds["distortion"][:] == [
        DISTORTION_CLASSES.index("blur"),
        -1,
        DISTORTION_CLASSES.index("jpeg compression"),
        -1,
    ]
    assert ds.with_format("torch")[:]["distortion"].tolist() == ds["distortion"][:]  # ints all the way to torch


def test_iqa_info_survives_datasets_operations(tmp_path):
    ds = load_iqa_dataset(str(small_folder(tmp_path / "f")), mos_range=(0, 5))
    info = iqa_info(ds)
    assert isinstance(info, datasets.DatasetInfo) is False
    assert (info.name, info.source, info.split_protocol, info.mos_range_from_data) == (
        "f",
        "folder",
        "by_content",
        False,
    )
    assert info.mos_range == (0.0, 5.0, True) and info.data_dir == str((tmp_path / "f").resolve())
    derived = {
        "select": ds.select([2, 0]),
        "filter": ds.filter(lambda batch: [m > 1.5 for m in batch["mos"]], batched=True),
        "shuffle": ds.shuffle(seed=1),
        "train_test_split": ds.train_test_split(test_size=0.5, seed=0)["test"],
        "with_transform": ds.with_transform(lambda batch: batch),
        "cast": ds.cast_column("mos", datasets.Value("float32")),
    }
    for what, other in derived.items():
        assert iqa_info(other) == info, what
    saved = tmp_path / "saved"
    ds.select([3, 1]).save_to_disk(str(saved))
    back = load_iqa_dataset(str(saved))
    assert iqa_info(back) == info and back.features == ds.features and back["mos"][:] == [1.0, 2.0]
    with pytest.raises(ValueError, match="load_iqa_dataset"):
        iqa_info(datasets.load_from_disk(str(saved)))  # plain datasets does not know the extra field
    datasets.DatasetDict({"train": ds.select([0, 1]), "test": ds.select([2])}).save_to_disk(str(tmp_path / "dd"))
    assert iqa_info(load_iqa_dataset(str(tmp_path / "dd"), split="test")) == info
    from mpiqe_hf.data import with_iqa_info

    plain = datasets.load_from_disk(str(saved)).select([1])
    assert iqa_info(with_iqa_info(plain, info)) == info and with_iqa_info(plain, info)["mos"][:] == [2.0]


# --------------------------------------------------------------------------------------------------------------
# bad data: one pass, every problem, metadata.csv lines


def write_raw_metadata(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.csv").write_text(text)


def bad_corpus(folder):
    """metadata.csv with a blank line, a quoted field over two lines, and a bad row of each kind (lines 4-15)."""
    for name in ["a.png", "c.png", "d.png", "e.png", "f.png", "g.png"] + [f"ok{i}.png" for i in range(10)]:
        make_image(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(folder / "full.png")
    (folder / "truncated.png").write_bytes((folder / "full.png").read_bytes()[:60])
    lines = [
        "file_name,mos,scene,distortion",  # 1
        "a.png,3.0,animal,blur",  # 2
        "",  # 3
        "broken.png,2.0,,",  # 4 undecodable
        'c.png,4.0,"animal|',  # 5 ... a quoted field over two lines
        'plant",noise',  # 6
        "../../etc/passwd,3.0,,",  # 7 outside the folder
        "/etc/hostname,3.0,,",  # 8 absolute, elsewhere
        "a.png,3.5,,",  # 9 duplicate of line 2
        "d.png,nan,,",  # 10 NaN
        "e.png,,,",  # 11 empty MOS
        "missing.png,3.0,,",  # 12 no such file
        "f.png,abc,,",  # 13 not a number
        "truncated.png,2.0,,",  # 14 truncated image
        "g.png,-3,,",  # 15 negative on a positive scale
    ] + [f"ok{i}.png,{1 + i * 0.4:.1f},," for i in range(10)]
    write_raw_metadata(folder, "\n".join(lines) + "\n")
    return {
        4: "image",
        7: "file_name",
        8: "file_name",
        9: "file_name",
        10: "mos",
        11: "mos",
        12: "image",
        13: "mos",
        14: "image",
        15: "mos",
    }


def test_bad_corpus_reported_in_one_pass_with_csv_lines(tmp_path):
    folder = tmp_path / "corpus"
    expected = bad_corpus(folder)
    with pytest.raises(ValueError) as caught:
        load_iqa_dataset(str(folder), verify_images=True)
    message = str(caught.value)
    assert message.startswith(f"{len(expected)} bad sample(s)")
    for line, field in expected.items():
        assert f"metadata.csv, line {line}, field '{field}'" in message, (line, message)
    assert "leads outside the dataset folder" in message and "listed twice (first on line 2)" in message
    assert "missing MOS" in message and "not a number: 'abc'" in message and "negative MOS -3.0" in message
    assert "Cannot load" in message and "broken.png" in message and "truncated.png" in message
    with pytest.warns(UserWarning, match=f"Skipped {len(expected)} bad sample"):
        ds = load_iqa_dataset(str(folder), verify_images=True, skip_bad_samples=True)
    assert len(ds) == 12  # a.png, c.png and the ten ok*.png
    assert [b.line for b in skipped_samples(ds)] == sorted(expected)
    assert [b.field for b in skipped_samples(ds)] == [expected[line] for line in sorted(expected)]
    assert iqa_info(ds).skipped == tuple(skipped_samples(ds))
    assert dataset_mos_range(ds) == (1.0, 4.6, True)  # the negative MOS does not widen the inferred range
    rows = labels(ds)
    assert rows[1]["scene"] == ["animal", "plant"] and rows[1]["distortion"] == "noise"
    # decoding is lazy unless asked: the two undecodable files then pass
    with pytest.raises(ValueError) as caught:
        load_iqa_dataset(str(folder))
    assert "line 4," not in str(caught.value) and "line 14," not in str(caught.value)
    assert str(caught.value).startswith(f"{len(expected) - 2} bad sample(s)")


def test_verify_images_in_several_processes(tmp_path):
    folder = tmp_path / "corpus"
    expected = bad_corpus(folder)
    with pytest.raises(ValueError) as one:
        load_iqa_dataset(str(folder), verify_images=True, num_proc=1)
    with pytest.raises(ValueError) as two:
        load_iqa_dataset(str(folder), verify_images=True, num_proc=2)
    assert str(one.value) == str(two.value) and len(expected) == 10


def test_checks_are_not_cached(tmp_path):
    folder = small_folder(tmp_path / "f")
    assert len(load_iqa_dataset(str(folder), verify_images=True)) == 4
    (folder / "c.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"line 4, field 'image': Cannot load"):
        load_iqa_dataset(str(folder), verify_images=True)
    os.remove(folder / "c.png")
    with pytest.raises(ValueError, match=r"line 4, field 'image': file not found"):
        load_iqa_dataset(str(folder))
    root = tmp_path / "db"
    make_image(root / "images" / "I01_01_01.png")
    label = write_liqe(
        tmp_path / "kadid10k_all_clip.txt",
        [
            ["images/I01_01_01.png", "4.0", "gaussian blur", "animal", "invalid", "invalid"],
        ],
    )
    assert len(load_iqa_dataset("kadid10k", data_dir=root, label_file=label, verify_images=True)) == 1
    (root / "images" / "I01_01_01.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"line 1, field 'image': Cannot load"):
        load_iqa_dataset("kadid10k", data_dir=root, label_file=label, verify_images=True)


def test_metadata_bom_crlf_and_padded_header(tmp_path):
    folder = tmp_path / "f"
    for name in ("a.png", "b.png"):
        make_image(folder / name)
    (folder / "metadata.csv").write_bytes(
        "file_name, mos ,scene\r\na.png,3.0,night\r\nb.png,2,\r\n".encode("utf-8-sig")
    )
    rows = labels(load_iqa_dataset(str(folder)))
    assert [r["mos"] for r in rows] == [3.0, 2.0] and rows[0]["scene"] == ["night"]


def test_folder_with_split_named_subfolders(tmp_path):
    folder = tmp_path / "f"
    make_image(folder / "train" / "a.png")
    make_image(folder / "test" / "b.png")
    write_metadata(folder, [("train/a.png", 3.0), ("test/b.png", 2.0)], header=("file_name", "mos"))
    ds = load_iqa_dataset(str(folder))
    assert ds["mos"][:] == [3.0, 2.0] and image_paths(ds) == [str(folder / "train/a.png"), str(folder / "test/b.png")]


def test_absolute_path_inside_the_folder_is_accepted(tmp_path):
    folder = tmp_path / "f"
    make_image(folder / "a.png")
    make_image(folder / "b.png")
    write_metadata(folder, [(str(folder / "a.png"), 1.0), ("sub/../b.png", 2.0)], header=("file_name", "mos"))
    ds = load_iqa_dataset(str(folder))
    assert image_paths(ds) == [str(folder / "a.png"), str(folder / "b.png")]


def test_given_range_and_implausible_rule(tmp_path):
    from mpiqe_hf.data.validation import implausible_mos

    rng = np.random.default_rng(0)
    zscores = rng.normal(0.0, 1.0, 500)
    assert not implausible_mos(zscores)[0].any()  # a centred scale: negatives are plausible
    five_point = np.concatenate([rng.uniform(1, 5, 200), [45.0, -1.0, 0.5]])
    mask, reasons = implausible_mos(five_point)
    assert mask.tolist() == [False] * 200 + [True, True, False]
    assert "far outside" in reasons[200] and "negative MOS" in reasons[201]
    assert not implausible_mos(np.array([-1.0, 2.0, 3.0]))[0].any()  # too few values to call a scale
    folder = tmp_path / "f"
    rows = [(f"{i}.png", v) for i, v in enumerate([-2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.5, 3.5, 2.5, 1.5, 2.2])]
    for name, _ in rows:
        make_image(folder / name)
    write_metadata(folder, rows, header=("file_name", "mos"))
    with pytest.raises(ValueError, match=r"line 2, field 'mos': negative MOS -2.0"):
        load_iqa_dataset(str(folder))
    ds = load_iqa_dataset(str(folder), mos_range=(-5, 5))  # a given range is the only bound
    assert dataset_mos_range(ds) == (-5.0, 5.0, True) and len(ds) == len(rows)
    with pytest.raises(ValueError, match=r"line 7, field 'mos': 5.0 is outside the native range \[-5.0, 4.0\]"):
        load_iqa_dataset(str(folder), mos_range=(-5, 4))


def test_liqe_problems_reported_together(tmp_path):
    root = tmp_path / "db"
    make_image(root / "images" / "I01_01_01.png")
    label = write_liqe(
        tmp_path / "kadid10k_all_clip.txt",
        [
            ["images/I01_01_01.png", "4.0", "gaussian blur", "animal", "invalid", "invalid"],
            ["images/I01_01_02.png", "4.5", "gaussian blur"],
            ["../outside.png", "9", "bokeh", "animal", "invalid", "invalid"],
        ],
    )
    with pytest.raises(ValueError) as caught:
        load_iqa_dataset("kadid10k", data_dir=root, label_file=label)
    message = str(caught.value)
    assert message.startswith("2 bad sample(s)")  # two rows, four problems
    for where in (
        "line 2, field 'columns'",
        "line 3, field 'path'",
        "line 3, field 'mos'",
        "line 3, field 'distortion'",
    ):
        assert where in message
