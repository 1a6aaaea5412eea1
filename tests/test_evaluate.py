"""Tests of examples/evaluate.py and examples/run_protocol.py with tiny random CLIP models on CPU."""

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest
from test_train import ROOT, _load_script, tiny_args, train_script, write_blur_folder

from mpiqe_hf.data import load_iqa_dataset, paper_splits

evaluate_script = _load_script("evaluate")


@pytest.fixture(scope="module")
def split_runs(tiny_clip, synthetic_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for k in (1, 2):
        train_script.main(tiny_args(tiny_clip, runs / f"split_{k}", "--cache_dir", synthetic_cache, "--split_index",
                                    str(k), "--max_train_samples", "8", "--max_eval_samples", "6"))
    return runs


def test_paper_splits_protocol_reports_median(split_runs, synthetic_cache, tmp_path, capsys):
    out = tmp_path / "eval"
    summary = evaluate_script.main(["--protocol", "paper_splits", "--model_name_or_path", str(split_runs),
                                    "--max_eval_samples", "12", "--output_dir", str(out), "--num_crops", "2",
                                    "--dataloader_num_workers", "0"])
    assert summary["num_models"] == 2 and [m["split_index"] for m in summary["per_model"]] == [1, 2]
    assert summary["median_srcc"] == pytest.approx(statistics.median(m["srcc"] for m in summary["per_model"]))
    assert summary["median_plcc"] == pytest.approx(statistics.median(m["plcc"] for m in summary["per_model"]))
    printed = capsys.readouterr().out
    assert "median of 2 splits" in printed and f"{summary['median_srcc']:.3f}" in printed
    # each model was scored on the test part of its own split (content-disjoint from its training part)
    ds = load_iqa_dataset("synthetic", cache_dir=synthetic_cache)
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"model", "split_index", "path", "mos", "mos_normalized", "predicted_mos",
                            "predicted_score"}
    assert len(rows) == 24
    for k in (1, 2):
        test_paths = {ds.cast_column("image", __import__("datasets").Image(decode=False))[i]["image"]["path"]
                      for i in paper_splits(ds)[k - 1][1]}
        assert {r["path"] for r in rows if r["split_index"] == str(k)} <= test_paths
    assert all(1.0 <= float(r["mos"]) <= 5.0 for r in rows)
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["median_srcc"] == summary["median_srcc"]


def test_cross_dataset_scores_the_whole_other_dataset(split_runs, tmp_path):
    other = write_blur_folder(tmp_path / "other", contents=2, levels=4)
    out = tmp_path / "eval"
    summary = evaluate_script.main(["--protocol", "cross", "--model_name_or_path", str(split_runs / "split_1"),
                                    str(split_runs / "split_2"), "--validation_dir", str(other), "--output_dir",
                                    str(out), "--dataloader_num_workers", "0"])
    assert [m["num_samples"] for m in summary["per_model"]] == [8, 8]
    assert all(m["split_index"] is None for m in summary["per_model"])
    assert (out / "scatter.png").is_file() and (out / "predictions.csv").is_file()


def test_single_model_on_one_split(split_runs, tmp_path):
    summary = evaluate_script.main(["--model_name_or_path", str(split_runs / "split_2"), "--split_index", "2",
                                    "--max_eval_samples", "5", "--output_dir", str(tmp_path / "eval"),
                                    "--dataloader_num_workers", "0"])
    assert summary["num_models"] == 1 and summary["per_model"][0]["num_samples"] == 5
    assert summary["median_srcc"] == summary["per_model"][0]["srcc"]


def test_run_protocol_trains_each_split_and_reports(tiny_clip, synthetic_cache, tmp_path):
    out = tmp_path / "protocol"
    command = [sys.executable, str(ROOT / "examples" / "run_protocol.py"), "--output_dir", str(out), "--num_splits",
               "1", "--first_split", "2", "--launch_args", "--num_processes 1 --cpu --num_machines 1 --mixed_precision no "
               "--dynamo_backend no", "--evaluate_args", "--max_eval_samples 6 --dataloader_num_workers 0", "--",
               *tiny_args(tiny_clip, "ignored", "--cache_dir", synthetic_cache, "--max_train_samples", "8",
                          "--max_eval_samples", "6")]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "median of 1 splits" in completed.stdout and not (out / "split_1").exists()
    assert json.loads((out / "split_2" / "all_results.json").read_text())["split_index"] == 2
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert results["num_models"] == 1 and results["per_model"][0]["split_index"] == 2
    # a finished split is not trained again
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "split 2: already trained" in again.stdout
