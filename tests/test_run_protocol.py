"""Tests of examples/run_protocol.py: costs before anything runs, the disk options, the optimistic best epoch and
the pilot (smoke-tested in this process on stand-in LIQE folders with the tiny CLIP)."""

import json
import shlex
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from test_evaluate import evaluate_script
from test_train import _load_script, tiny_args, train_script


protocol = _load_script("run_protocol")
KNOWN_WITH_DISK_OPTIONS = protocol.train_options(protocol.load_train_script()) | {
    "save_adapter_only",
    "checkpoints_total_limit",
}


def _option(command, name):
    """The value of option `name` in `command` that argparse keeps: the last one given."""
    return command[len(command) - command[::-1].index(name)]


def _commands(printed):
    return [line for line in printed.splitlines() if line.startswith("+ ")]


def test_table_1_dry_run_prints_its_costs_first_and_passes_the_disk_options(monkeypatch, capsys):
    # train.py's --save_adapter_only and --checkpoints_total_limit: passed wherever train.py knows them
    monkeypatch.setattr(protocol, "train_options", lambda script: KNOWN_WITH_DISK_OPTIONS)
    protocol.main(["--table", "1", "--liqe_root", "/data/IQA_Database", "--output_dir", "/tmp/never", "--dry_run"])
    printed = capsys.readouterr().out
    trains = [c for c in _commands(printed) if "train.py" in c]
    assert len(trains) == 60
    for command in trains:
        options = shlex.split(command)[shlex.split(command).index(str(protocol.HERE / "train.py")) + 1 :]
        assert options[:3] == ["--save_adapter_only", "--checkpoints_total_limit", "1"]
    assert all("--baselines" in c for c in _commands(printed) if "evaluate.py" in c)
    # the costs come before the first command
    costs = printed[: printed.index("+ ")]
    assert "Before starting: 60 training run(s) to do (0 already trained)." in costs
    adapter, _ = protocol.parameter_bytes(None, protocol.load_train_script())
    assert 40e6 < adapter < 80e6  # MP-IQE's trained weights on ViT-B/16: tens of MB
    assert f"disk: about {protocol._size(60 * 2 * adapter)} for the new runs (adapter-only" in costs
    assert 60 * 2 * adapter < 64e9  # Table 1 fits 64 GB
    # GPU time: 80 % of each dataset x 8 crops x 30 epochs, at 0.005 s per crop, plus a third of the evaluation crops
    train_crops = sum(round(0.8 * protocol.DATASET_IMAGES[name]) * 8 * 30 for name in protocol.DATASETS)
    assert f"{10 * train_crops / 1e6:.2f} M training crops" in costs
    hours = float(costs.split("GPU: about ")[1].split(" ")[0])
    assert 10 * train_crops * 0.005 / 3600 < hours < 1.5 * 10 * train_crops * 0.005 / 3600


def test_costs_follow_the_runs_options_and_count_full_models_without_the_disk_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(protocol, "train_options", lambda script: set())
    protocol.main(
        [
            "--table",
            "5",
            "--liqe_root",
            "/data/IQA_Database",
            "--output_dir",
            str(tmp_path),
            "--dry_run",
            "--num_splits",
            "1",
            "--seconds_per_crop",
            "0.01",
            "--",
            "--num_train_epochs",
            "3",
            "--checkpointing_steps",
            "epoch",
        ]
    )
    printed = capsys.readouterr().out
    assert "has no --save_adapter_only" in printed and "--save_adapter_only" not in "".join(_commands(printed))
    adapter, full = protocol.parameter_bytes(None, protocol.load_train_script())
    # 6 runs: 2 full models each and one checkpoint (full weights and Adam's two moments of the trained ones)
    assert f"disk: about {protocol._size(6 * (3 * full + 2 * adapter))}" in printed
    fractions = [0.2, 0.4, 0.6]
    crops = sum(
        round(0.8 * protocol.DATASET_IMAGES[name] * f) * 8 * 3 for f in fractions for name in ("live", "livec")
    )
    assert f"{crops / 1e6:.2f} M training crops" in printed


def test_a_bad_run_option_stops_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        protocol.main(["--output_dir", str(tmp_path / "o"), "--", "--num_crops", "many"])
    assert "--num_crops" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_best_epochs_reports_median_and_mean_over_splits(tmp_path):
    folders = []
    for k, history in enumerate(
        [[(0, 0.5, 0.6), (1, 0.7, 0.65), (2, 0.6, 0.7)], [(0, 0.8, 0.9), (1, 0.75, 0.8)], [(0, 0.2, 0.3)]]
    ):
        folder = tmp_path / f"split_{k + 1}"
        folder.mkdir()
        (folder / "eval_history.json").write_text(
            json.dumps([{"epoch": e, "step": 10 * e, "srcc": srcc, "plcc": plcc} for e, srcc, plcc in history])
        )
        folders.append(folder)
    folders.append(tmp_path / "split_without_history")
    best = protocol.best_epochs(folders)
    assert best["optimistic_epochs"] == [1, 0, 0]
    assert best["optimistic_median_srcc"] == 0.7 and best["optimistic_mean_srcc"] == pytest.approx(1.7 / 3)
    assert best["optimistic_median_plcc"] == 0.65 and best["optimistic_mean_plcc"] == pytest.approx(1.85 / 3)
    assert protocol.best_epochs([tmp_path / "nothing"])["optimistic_median_srcc"] is None


def write_standin_liqe(root, folder, prefix, mos_range, contents=6, levels=4, size=40):
    """A LIQE database folder of textures blurred at `levels` strengths (MOS falls with blur): images/ and
    splits2/<prefix>_all_clip.txt."""
    base_dir = Path(root) / folder
    (base_dir / "images").mkdir(parents=True)
    (base_dir / "splits2").mkdir()
    rng = np.random.default_rng(len(prefix))
    lines, low, high = [], *mos_range
    for content in range(contents):
        base = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for level in range(levels):
            name = f"images/c{content}_l{level}.png"
            base.filter(ImageFilter.GaussianBlur(radius=1.5 * level)).save(base_dir / name)
            mos = high - (high - low) * level / levels
            lines.append(f"{name}\t{mos:.2f}\tgaussian blur\tanimal\tinvalid\tinvalid\n")
    (base_dir / "splits2" / f"{prefix}_all_clip.txt").write_text("".join(lines))


def test_pilot_trains_the_four_recipes_on_both_datasets_beside_the_baselines(tiny_clip, tmp_path, monkeypatch, capsys):
    liqe = tmp_path / "IQA_Database"
    write_standin_liqe(liqe, "koniq-10k", "koniq10k", (1.0, 5.0), contents=5, levels=3)
    write_standin_liqe(liqe, "ChallengeDB_release", "clive", (0.0, 100.0), contents=5, levels=3)
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
            "--pilot",
            "--liqe_root",
            str(liqe),
            "--output_dir",
            str(out),
            "--evaluate_args",
            "--dataloader_num_workers 0",
            "--",
            *tiny_args(
                tiny_clip,
                "ignored",
                "--num_train_epochs",
                "2",
                "--per_device_train_batch_size",
                "6",
                "--num_crops",
                "1",
                steps=None,
            ),
        ]
    )
    printed = capsys.readouterr().out
    assert printed.index("Before starting: 8 training run(s) to do") < printed.index("+ ")
    trains = [command for command in ran if command[0].endswith("train.py")]
    recipes = set()
    for command in trains:
        assert _option(command, "--split_index") == "1" and _option(command, "--split_protocol") == "paper"
        recipes.add(
            tuple(_option(command, name) for name in ("--dataset_name", "--config_overrides", "--horizontal_flip"))
        )
    # the user's --config_overrides (tiny_args') join the pilot's own instead of replacing them
    assert recipes == {
        (name, f"score_loss_scale={scale},decoder_intermediate_size=64", flip)
        for name in ("koniq10k", "livec")
        for scale in (1, 10)
        for flip in ("True", "False")
    }
    # one table: each recipe beside CLIP-IQA and the linear probe on the same split, final and optimistic
    assert text.startswith("## Pilot: the paper preset on KonIQ-10k and LIVE Challenge")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "score-loss scale" in line]
    assert len(rows) == 8 and "| KonIQ, score-loss scale 10, flips off |" in text
    assert "optimistic (best epoch on the test split, as the authors' code reports), median" in text
    for row in rows:
        assert "—" not in row, row
    assert (out / "pilot.md").read_text() == text
    results = json.loads((out / "evaluation" / "pilot" / "livec_scale_1_flip_on" / "results.json").read_text())
    model = results["per_model"][0]
    assert model["linear_probe"]["num_train_images"] == 12 and model["clip_iqa"]["num_samples"] == 3
    history = json.loads((out / "pilot" / "livec_scale_1_flip_on" / "split_1" / "eval_history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1]
    best = max(history, key=lambda entry: entry["srcc"])
    row = next(r for r in rows if "LIVEC, score-loss scale 1, flips on" in r).split(" | ")
    assert row[3] == f"{best['plcc']:.3f} / {best['srcc']:.3f}"  # one split: the median is that split's
    assert row[1] == f"{model['plcc']:.3f} / {model['srcc']:.3f}"
    assert row[5] == f"{model['clip_iqa']['plcc']:.3f} / {model['clip_iqa']['srcc']:.3f}"
    assert row[6].rstrip(" |") == f"{model['linear_probe']['plcc']:.3f} / {model['linear_probe']['srcc']:.3f}"
    assert statistics.median([model["srcc"]]) == results["median_srcc"]
