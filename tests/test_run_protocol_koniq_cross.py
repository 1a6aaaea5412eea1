"""Tests of `run_protocol.py --table koniq-cross`: trained on KonIQ-10k's official training split, scored on its test
split and on other datasets in their official layouts, beside the published figures; run through `main()` on
stand-in folders with the tiny Hub-shaped CLIP."""

import json
import shlex

import numpy as np
import pytest
from PIL import Image
from test_data_cross import standin_agiqa, standin_spaq, write_csv
from test_evaluate import evaluate_script
from test_run_protocol import _commands, _option, protocol
from test_train import tiny_args, train_script


KONIQ_SETS = ["training"] * 12 + ["validation"] * 3 + ["test"] * 4


def standin_koniq_release(root, sets=KONIQ_SETS, size=40):
    """KonIQ-10k's layout (scores file on 1-5, 1024x768/) with the official split file, textures of falling MOS."""
    rng = np.random.default_rng(5)
    scores, split = [], []
    for i, part in enumerate(sets):
        name = f"{2000 + i}.jpg"
        (root / "1024x768").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "1024x768" / name)
        mos = 1.2 + 3.6 * ((i * 7) % len(sets)) / len(sets)
        scores.append([name, mos, 0.5])
        split.append([name, 20 * mos, 0.5, part])
    write_csv(root / "koniq10k_scores_and_distributions.csv", ["image_name", "MOS", "SD"], scores)
    write_csv(root / "koniq10k_distributions_sets.csv", ["image_name", "MOS", "SD", "set"], split)


def test_koniq_cross_dry_run_costs_count_the_official_split_and_the_cross_scoring(tmp_path, capsys):
    (tmp_path / "koniq10k").mkdir()
    (tmp_path / "SPAQ").mkdir()
    protocol.main(
        [
            "--table",
            "koniq-cross",
            "--data_dir",
            f"koniq={tmp_path / 'koniq10k'}",
            "--data_dir",
            f"spaq={tmp_path / 'SPAQ'}",
            "--output_dir",
            "/tmp/never",
            "--dry_run",
        ]
    )
    printed = capsys.readouterr().out
    costs = printed[: printed.index("+ ")]
    assert "Before starting: 1 training run(s) to do" in costs
    # 7,058 training images x 8 crops x 30 epochs; evaluation: 30 x the 1,000 validation images, 3 passes over the
    # 2,015 test images and the probe's 7,058, then SPAQ's 11,125 three times and the probe's 7,058 again
    assert f"{7058 * 8 * 30 / 1e6:.2f} M training crops" in costs
    assert f"{8 * (30 * 1000 + 3 * 2015 + 7058 + 3 * 11125 + 7058) / 1e6:.2f} M evaluation crops" in costs
    assert "koniq-cross: KADID skipped: no --data_dir kadid10k=PATH given." in printed
    assert "koniq-cross: AGIQA-3K skipped: no --data_dir agiqa3k=PATH given." in printed
    assert (
        "| DeQA-Score (published) | 0.953 / 0.941 | 0.895 / 0.896 | 0.694 / 0.687 | 0.892 / 0.879 | 0.809 / 0.729 |"
        in (printed)
    )
    assert "| LIQE (published) | n/a (not verified offline) |" in printed
    assert "arXiv:2501.11561), Table 3" in printed


def test_koniq_cross_needs_koniq_and_existing_folders(tmp_path, capsys):
    with pytest.raises(SystemExit):
        protocol.main(["--table", "koniq-cross", "--output_dir", "/tmp/never", "--dry_run"])
    assert "--table koniq-cross needs --data_dir koniq10k=PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        protocol.main(
            ["--table", "koniq-cross", "--output_dir", str(tmp_path / "o")]
            + ["--data_dir", f"koniq10k={tmp_path}", "--data_dir", f"spaq={tmp_path / 'SPAQ'}"]
        )
    assert f"--data_dir spaq={tmp_path / 'SPAQ'}: no such folder." in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_koniq_cross_trains_on_the_official_split_and_scores_the_test_sets(tiny_clip, tmp_path, monkeypatch, capsys):
    standin_koniq_release(tmp_path / "koniq10k")
    standin_spaq(tmp_path / "SPAQ", scores=[5.0 + 9.0 * i for i in range(10)])
    standin_agiqa(tmp_path / "AGIQA-3K", scores=[0.2 + 0.45 * i for i in range(10)])
    ran = []

    def in_process(self, command):  # train.py and evaluate.py in this process instead of children
        if self.planning:
            return
        print("+", shlex.join(command), flush=True)
        script = next(i for i, part in enumerate(command) if part.endswith(("train.py", "evaluate.py")))
        ran.append(command[script:])
        (train_script if command[script].endswith("train.py") else evaluate_script).main(command[script + 1 :])

    monkeypatch.setattr(protocol.Runner, "run", in_process)
    out = tmp_path / "runs"
    text = protocol.main(
        [
            "--table",
            "koniq-cross",
            "--data_dir",
            f"koniq10k={tmp_path / 'koniq10k'}",
            "--data_dir",
            f"spaq={tmp_path / 'SPAQ'}",
            "--data_dir",
            f"AGIQA-3K={tmp_path / 'AGIQA-3K'}",
            "--output_dir",
            str(out),
            "--evaluate_args",
            "--dataloader_num_workers 0 --num_crops 1",
            "--",
            *tiny_args(tiny_clip, "ignored"),
        ]
    )
    printed = capsys.readouterr().out
    assert printed.index("Before starting: 1 training run(s) to do") < printed.index("+ ")
    assert "koniq-cross: LIVEC skipped: no --data_dir livec=PATH given." in printed
    (train,) = [command for command in ran if command[0].endswith("train.py")]
    assert _option(train, "--split_protocol") == "official" and "--load_best_model_at_end" in train
    trained = json.loads((out / "koniq_official" / "split_1" / "all_results.json").read_text())
    # trained on the 12 training images, the epoch chosen on the 3 validation images, tested on the 4 test images
    assert (trained["num_train_samples"], trained["num_eval_samples"]) == (12, 3) and "test_srcc" in trained
    spaq = next(c for c in ran if "spaq" in c)
    assert _option(spaq, "--max_image_size") == "683"

    def results(name):
        return json.loads((out / "evaluation" / f"koniq_official_on_{name}" / "results.json").read_text())

    koniq, spaq, agiqa = results("koniq10k_test"), results("spaq"), results("agiqa3k")
    # the test split of KonIQ; SPAQ and AGIQA-3K whole
    assert [r["per_model"][0]["num_samples"] for r in (koniq, spaq, agiqa)] == [4, 10, 10]
    assert koniq["per_model"][0]["linear_probe"]["num_train_images"] == 12  # fitted on the training split
    row = next(line for line in text.splitlines() if line.startswith("| MP-IQE |")).split(" | ")
    assert row[1:6] == [
        f"{koniq['median_plcc']:.3f} / {koniq['median_srcc']:.3f}",
        f"{spaq['median_plcc']:.3f} / {spaq['median_srcc']:.3f}",
        "skipped (no --data_dir)",
        "skipped (no --data_dir)",
        f"{agiqa['median_plcc']:.3f} / {agiqa['median_srcc']:.3f}",
    ]
    probe = next(line for line in text.splitlines() if line.startswith("| linear probe")).split(" | ")
    assert probe[2] == f"{spaq['linear_probe_median_plcc']:.3f} / {spaq['linear_probe_median_srcc']:.3f}"
    assert "| Q-Align (published) | 0.941 / 0.940 |" in text
    assert (out / "table_koniq-cross.md").read_text() == text
    assert len(_commands(printed)) == 4  # one training run; the scorings of KonIQ, SPAQ and AGIQA-3K
