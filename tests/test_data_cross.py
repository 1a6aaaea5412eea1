"""Tests of the loaders behind the KonIQ cross-dataset table: SPAQ and AGIQA-3K in their official layouts, and
KonIQ-10k's official training/validation/test split. Stand-in folders with tiny images, laid out like the releases."""

import csv

import pytest
from test_data import image_paths, labels, make_image

from mpiqe_hf.data import (
    KONIQ_OFFICIAL_SIZES,
    default_max_image_size,
    get_dataset_spec,
    iqa_info,
    koniq_official_splits,
    load_iqa_dataset,
)
from mpiqe_hf.training import DataArguments, plan_split


SPAQ_TABLE = "MOS and Image attribute scores"
SPAQ_HEADER = ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"]


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def standin_spaq(root, scores=(48.86, 62.5, 36.11)):
    """SPAQ's release: TestImage/00001.jpg ... and the MOS table (here its CSV export) in Annotations/."""
    rows = []
    for number, mos in enumerate(scores, start=1):
        make_image(
            root / "TestImage" / f"{number:05d}.jpg", size=(12, 9), color=(25 * number % 256, 90, 160), fmt="JPEG"
        )
        rows.append([f"{number:05d}.jpg", mos, 50, 51, 52, 53, 54])
    return write_csv(root / "Annotations" / f"{SPAQ_TABLE}.csv", SPAQ_HEADER, rows)


def standin_agiqa(root, scores=(0.97, 1.36, 4.49), folder="AGIQA-3K"):
    """AGIQA-3K's release: data.csv (its nine columns) and the images of AGIQA-3K.zip."""
    header = ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"]
    rows = []
    for number, mos in enumerate(scores):
        name = f"AttnGAN_normal_{number:03d}.jpg"
        make_image(root / folder / name, color=(200, 25 * number % 256, 40), fmt="JPEG")
        rows.append([name, "statue of a man", "", "", "", mos, 0.22, 0.41, 0.62])
    return write_csv(root / "data.csv", header, rows)


def test_spaq_standin_folder_loads(tmp_path):
    root = tmp_path / "SPAQ"
    table = standin_spaq(root)
    ds = load_iqa_dataset("spaq", data_dir=root)
    rows = labels(ds)
    assert [r["mos"] for r in rows] == [48.86, 62.5, 36.11]
    assert [r["mos_normalized"] for r in rows] == pytest.approx([0.4886, 0.625, 0.3611])
    assert [r["content_id"] for r in rows] == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert rows[0]["scene"] == [] and rows[0]["distortion"] is None
    assert image_paths(ds)[1] == str((root / "TestImage" / "00002.jpg").resolve())
    assert ds[0]["image"].size == (12, 9)
    info = iqa_info(ds)
    assert (info.name, info.mos_range, info.split_protocol) == ("spaq", (0.0, 100.0, True), "by_image")
    assert info.score_file == str(table.resolve())
    # a NaN score is one clear error naming the file, its line and the field
    write_csv(table, SPAQ_HEADER, [["00001.jpg", 48.86], ["00002.jpg", "nan"], ["00003.jpg", 36.11]])
    with pytest.raises(ValueError, match=r"scores.csv, line 3, field 'mos': missing MOS"):
        load_iqa_dataset("spaq", data_dir=root)


def test_spaq_without_its_table_or_columns_says_what_it_looked_for(tmp_path):
    root = tmp_path / "SPAQ"
    make_image(root / "TestImage" / "00001.jpg")
    with pytest.raises(ValueError, match=r"SPAQ MOS table not found in .*Annotations \(looked for MOS and Image"):
        load_iqa_dataset("spaq", data_dir=root)
    write_csv(root / "Annotations" / f"{SPAQ_TABLE}.csv", ["Image", "Score"], [["00001.jpg", 50]])
    with pytest.raises(ValueError, match=r"no header row with the columns \['image name', 'mos'\]"):
        load_iqa_dataset("spaq", data_dir=root)


def test_spaq_xlsx_needs_openpyxl_or_reads_the_sheet(tmp_path):
    root = tmp_path / "SPAQ"
    make_image(root / "TestImage" / "00001.jpg", fmt="JPEG")
    try:
        import openpyxl
    except ImportError:
        (root / "Annotations").mkdir(parents=True)
        (root / "Annotations" / f"{SPAQ_TABLE}.xlsx").write_bytes(b"PK")
        with pytest.raises(ValueError, match=r"needs openpyxl .*or export the sheet to CSV"):
            load_iqa_dataset("spaq", data_dir=root)
        return
    book = openpyxl.Workbook()
    book.active.append(SPAQ_HEADER)
    book.active.append(["00001.jpg", 77.5, 1, 2, 3, 4, 5])
    (root / "Annotations").mkdir(parents=True)
    book.save(root / "Annotations" / f"{SPAQ_TABLE}.xlsx")
    assert load_iqa_dataset("spaq", data_dir=root)["mos"] == [77.5]


def test_spaq_default_size_gives_a_4_3_frame_a_shorter_side_of_512():
    from mpiqe_hf.image_processing_mpiqe import downscaled_size

    assert default_max_image_size("SPAQ") == get_dataset_spec("spaq").max_image_size
    assert downscaled_size(3000, 4000, default_max_image_size("spaq")) == (512, 683)
    assert DataArguments(dataset_name="spaq").resolved_max_image_size == 683


@pytest.mark.parametrize("folder", ["AGIQA-3K", "."])
def test_agiqa3k_standin_folder_loads(tmp_path, folder):
    root = tmp_path / "agiqa"
    standin_agiqa(root, folder=folder)
    ds = load_iqa_dataset("AGIQA-3K", data_dir=root)
    rows = labels(ds)
    assert [r["mos"] for r in rows] == [0.97, 1.36, 4.49]
    assert [r["mos_normalized"] for r in rows] == pytest.approx([0.194, 0.272, 0.898])
    assert rows[2]["content_id"] == "AttnGAN_normal_002.jpg"
    assert image_paths(ds)[0] == str((root / folder / "AttnGAN_normal_000.jpg").resolve())
    assert iqa_info(ds).name == "agiqa3k" and iqa_info(ds).mos_range == (0.0, 5.0, True)


def test_agiqa3k_reads_the_quality_mos_and_reports_bad_rows(tmp_path):
    root = tmp_path / "agiqa"
    standin_agiqa(root, scores=(0.97, 6.2, 4.49))
    (root / "AGIQA-3K" / "AttnGAN_normal_002.jpg").unlink()
    with pytest.raises(ValueError, match=r"2 bad sample") as caught:
        load_iqa_dataset("agiqa3k", data_dir=root)
    message = str(caught.value)
    assert "data.csv, line 3, field 'mos': 6.2 is outside the native range [0.0, 5.0]" in message
    assert "data.csv, line 4, field 'image': file not found" in message
    write_csv(root / "data.csv", ["name", "prompt", "mos_align"], [["AttnGAN_normal_000.jpg", "a cat", 2.0]])
    with pytest.raises(ValueError, match=r"data.csv: no header row with the columns \['name', 'mos_quality'\]"):
        load_iqa_dataset("agiqa3k", data_dir=root)


def standin_koniq(root, sets):
    """KonIQ-10k's release (scores file, 1024x768/) with github.com/subpic/koniq's split file next to it."""
    with open(root.joinpath("koniq10k_scores_and_distributions.csv") if root.mkdir() is None else None, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"])
        for i, _ in enumerate(sets):
            make_image(root / "1024x768" / f"{1000 + i}.jpg", fmt="JPEG")
            writer.writerow([f"{1000 + i}.jpg", 0, 1, 2, 3, 4, 10, 1.5 + 0.2 * i, 0.5, 40 + i])
    header = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"]
    rows = [[f"{1000 + i}.jpg", 0, 0, 0, 1, 0, 100, 60.0 + i, 0.5, part] for i, part in enumerate(sets)]
    return write_csv(root / "koniq10k_distributions_sets.csv", header, rows[::-1])


def test_koniq_official_split_follows_the_set_column(tmp_path):
    sets = ["training", "test", "training", "validation", "training", "test"]
    sets_file = standin_koniq(tmp_path / "koniq", sets)
    ds = load_iqa_dataset("koniq10k", data_dir=tmp_path / "koniq")
    assert koniq_official_splits(ds) == {"train": [0, 2, 4], "val": [3], "test": [1, 5]}
    assert sum(KONIQ_OFFICIAL_SIZES.values()) == 10073
    # train.py's --split_protocol official: validation selects the epoch, the test part is scored
    data_args = DataArguments(dataset_name="koniq10k", data_dir=str(tmp_path / "koniq"), split_protocol="official")
    plan = plan_split(data_args)
    assert (plan.train_idx, plan.eval_idx, plan.test_idx) == ([0, 2, 4], [3], [1, 5])
    assert plan.held_out[2] == "test" and plan.description.startswith("official: KonIQ-10k's")
    # the MOS stays the scores file's 1-5 (the split file's MOS is on 0-100)
    assert ds["mos"][0] == 1.5
    # a bad split file: every problem in one message, with its line
    rows = list(csv.reader(open(sets_file)))
    rows[2][-1] = "train"
    rows[3][0] = rows[1][0]
    write_csv(sets_file, rows[0], rows[1:])
    with pytest.raises(ValueError) as caught:
        koniq_official_splits(ds)
    message = str(caught.value)
    assert "line 3, field 'set': 'train' is not one of ['training', 'validation', 'test']" in message
    assert "line 4, field 'image_name': '1005.jpg' is listed twice (first on line 2)" in message
    assert "2 image(s) of the dataset are not listed" in message


def test_official_split_needs_koniq_and_its_split_file(tmp_path):
    standin_koniq(tmp_path / "koniq", ["training", "test"])
    (tmp_path / "koniq" / "koniq10k_distributions_sets.csv").unlink()
    with pytest.raises(ValueError, match=r"official split file not found: .*koniq10k_distributions_sets.csv"):
        plan_split(DataArguments(dataset_name="koniq10k", data_dir=str(tmp_path / "koniq"), split_protocol="official"))
    standin_spaq(tmp_path / "SPAQ")
    with pytest.raises(ValueError, match=r"--split_protocol official is KonIQ-10k's own split; spaq has none"):
        plan_split(DataArguments(dataset_name="spaq", data_dir=str(tmp_path / "SPAQ"), split_protocol="official"))
