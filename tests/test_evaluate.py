"""Tests of examples/evaluate.py and examples/run_protocol.py with tiny random CLIP models on CPU."""

import csv
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_train import ROOT, _load_script, tiny_args, train_script, write_blur_folder

from mpiqe_hf.baselines import PROBE_ALPHAS, RidgeProbe, clip_image_embeddings, linear_probe
from mpiqe_hf.data import load_iqa_dataset, paper_splits


evaluate_script = _load_script("evaluate")


@pytest.fixture(scope="module")
def split_runs(tiny_clip, synthetic_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for k in (1, 2):
        train_script.main(
            tiny_args(
                tiny_clip,
                runs / f"split_{k}",
                "--cache_dir",
                synthetic_cache,
                "--split_index",
                str(k),
                "--max_train_samples",
                "8",
                "--max_eval_samples",
                "6",
            )
        )
    return runs


def test_paper_splits_protocol_reports_median(split_runs, synthetic_cache, tmp_path, capsys):
    out = tmp_path / "eval"
    summary = evaluate_script.main(
        [
            "--protocol",
            "paper_splits",
            "--model_name_or_path",
            str(split_runs),
            "--max_eval_samples",
            "12",
            "--output_dir",
            str(out),
            "--num_crops",
            "2",
            "--dataloader_num_workers",
            "0",
        ]
    )
    assert summary["num_models"] == 2 and [m["split_index"] for m in summary["per_model"]] == [1, 2]
    assert summary["median_srcc"] == pytest.approx(statistics.median(m["srcc"] for m in summary["per_model"]))
    assert summary["median_plcc"] == pytest.approx(statistics.median(m["plcc"] for m in summary["per_model"]))
    printed = capsys.readouterr().out
    assert "median of 2 splits" in printed and f"{summary['median_srcc']:.3f}" in printed
    # each model was scored on the test part of its own split (content-disjoint from its training part)
    ds = load_iqa_dataset("synthetic", cache_dir=synthetic_cache)
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {
        "model",
        "split_index",
        "path",
        "mos",
        "mos_normalized",
        "predicted_mos",
        "predicted_score",
    }
    assert len(rows) == 24
    for k in (1, 2):
        test_paths = {
            ds.cast_column("image", __import__("datasets").Image(decode=False))[i]["image"]["path"]
            for i in paper_splits(ds)[k - 1][1]
        }
        assert {r["path"] for r in rows if r["split_index"] == str(k)} <= test_paths
    assert all(1.0 <= float(r["mos"]) <= 5.0 for r in rows)
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["median_srcc"] == summary["median_srcc"]


def test_cross_dataset_scores_the_whole_other_dataset(split_runs, tmp_path):
    other = write_blur_folder(tmp_path / "other", contents=2, levels=4)
    out = tmp_path / "eval"
    summary = evaluate_script.main(
        [
            "--protocol",
            "cross",
            "--model_name_or_path",
            str(split_runs / "split_1"),
            str(split_runs / "split_2"),
            "--validation_dir",
            str(other),
            "--output_dir",
            str(out),
            "--dataloader_num_workers",
            "0",
            "--baselines",
        ]
    )
    assert [m["num_samples"] for m in summary["per_model"]] == [8, 8]
    assert all(m["split_index"] is None for m in summary["per_model"])
    # the probe learns from each model's own training part (280 synthetic images) and scores the other dataset
    probes = [m["linear_probe"] for m in summary["per_model"]]
    assert [p["num_train_images"] for p in probes] == [280, 280] and [p["num_samples"] for p in probes] == [8, 8]
    assert probes[0]["plcc"] != probes[1]["plcc"]  # splits 1 and 2: two training parts
    assert (out / "scatter.png").is_file() and (out / "predictions.csv").is_file()


def test_single_model_on_one_split(split_runs, tmp_path):
    summary = evaluate_script.main(
        [
            "--model_name_or_path",
            str(split_runs / "split_2"),
            "--split_index",
            "2",
            "--max_eval_samples",
            "5",
            "--output_dir",
            str(tmp_path / "eval"),
            "--dataloader_num_workers",
            "0",
        ]
    )
    assert summary["num_models"] == 1 and summary["per_model"][0]["num_samples"] == 5
    assert summary["median_srcc"] == summary["per_model"][0]["srcc"]


def test_run_protocol_trains_each_split_and_reports(tiny_clip, synthetic_cache, tmp_path):
    out = tmp_path / "protocol"
    command = [
        sys.executable,
        str(ROOT / "examples" / "run_protocol.py"),
        "--output_dir",
        str(out),
        "--num_splits",
        "1",
        "--first_split",
        "2",
        "--launch_args",
        "--num_processes 1 --cpu --num_machines 1 --mixed_precision no --dynamo_backend no",
        "--evaluate_args",
        "--max_eval_samples 6 --dataloader_num_workers 0",
        "--",
        *tiny_args(
            tiny_clip, "ignored", "--cache_dir", synthetic_cache, "--max_train_samples", "8", "--max_eval_samples", "6"
        ),
    ]
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


@pytest.mark.parametrize("table, runs", [(1, 6), (4, 10), (5, 6), (6, 16)])
def test_run_protocol_tables_use_the_papers_protocol(table, runs, capsys):
    protocol = _load_script("run_protocol")
    text = protocol.main(
        [
            "--table",
            str(table),
            "--liqe_root",
            "/data/IQA_Database",
            "--output_dir",
            "/tmp/never",
            "--num_splits",
            "2",
            "--dry_run",
        ]
    )
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    trains = [c for c in commands if "train.py" in c]
    assert len(trains) == runs * 2 and len([c for c in commands if "evaluate.py" in c]) == runs
    for command in trains:  # LIQE's labels on the paper's 80/20 split, never LIQE's own split
        assert "--split_protocol paper" in command and "--label_file /data/IQA_Database/" in command
        assert "--split_index 1" in command or "--split_index 2" in command
    assert "(paper)" in text or "paper" in text.splitlines()[4]
    if table == 1:
        assert "| KonIQ | — | — | — | — | — | — | 0.904 | 0.898 |" in text  # MP-IQE, CLIP-IQA, probe, paper
        assert "--data_dir /data/IQA_Database/koniq-10k" in trains[-1]
    if table == 4:
        assert sum("use_scene_prompts=false" in c for c in trains) == 4  # CSIQ and LIVEC, 2 splits each


def test_run_protocol_names_a_missing_data_folder_before_any_run(tmp_path, capsys):
    protocol = _load_script("run_protocol")
    with pytest.raises(SystemExit) as raised:
        protocol.main(["--table", "1", "--liqe_root", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")])
    assert raised.value.code == 2
    assert f"--liqe_root {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_default_scores_the_held_out_part_with_baselines_beside(split_runs, synthetic_cache, tmp_path, capsys):
    summary = evaluate_script.main(
        [
            "--model_name_or_path",
            str(split_runs / "split_1"),
            "--output_dir",
            str(tmp_path / "eval"),
            "--dataloader_num_workers",
            "0",
            "--clip_iqa",
        ]
    )
    ds = load_iqa_dataset("synthetic", cache_dir=synthetic_cache)
    held_out = paper_splits(ds)[0][1]
    model = summary["per_model"][0]
    # all of the held-out part of split 1 (training capped it at 6 for validation; evaluation does not)
    assert model["num_samples"] == len(held_out) == 56 and model["split_index"] == 1
    printed = capsys.readouterr().out
    assert (
        "scoring 56 images, the held-out 20 % part of paper: random 80/20 split 1 of 10 of synthetic (seed 0, by "
        f"content); results to {(tmp_path / 'eval').resolve()}" in printed
    )
    with open(tmp_path / "eval" / "predictions.csv") as f:
        paths = {row["path"] for row in csv.DictReader(f)}
    plain = ds.cast_column("image", __import__("datasets").Image(decode=False))
    assert paths == {plain[i]["image"]["path"] for i in held_out}
    # --clip_iqa (the same option as --baselines) prints both baselines, scored on the same 56 images
    assert "CLIP-IQA (zero-shot, same CLIP) on the same images: SRCC" in printed
    assert (
        "linear probe (ridge on the frozen CLIP image embedding, fitted on the training part) on the same "
        "images: SRCC" in printed
    )
    table = printed[printed.index("| method |") :].splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| CLIP-IQA (zero-shot, same CLIP)",
        "| linear probe (ridge on the frozen CLIP image embedding, fitted on the training part)",
        "| MP-IQE",
    ]
    assert model["clip_iqa"]["num_samples"] == 56 and summary["clip_iqa_median_srcc"] == model["clip_iqa"]["srcc"]
    probe = model["linear_probe"]
    train_idx = paper_splits(ds)[0][0]
    assert probe["num_samples"] == 56 and probe["num_train_images"] == len(train_idx) == 280
    assert probe["alpha"] in PROBE_ALPHAS and summary["linear_probe_median_srcc"] == probe["srcc"]
    assert f"| {summary['linear_probe_median_plcc']:.3f} | {summary['linear_probe_median_srcc']:.3f} |" in table[3]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["per_model"][0]["linear_probe"] == probe and saved["linear_probe_median_srcc"] == probe["srcc"]
    whole = evaluate_script.main(
        [
            "--model_name_or_path",
            str(split_runs / "split_1"),
            "--whole_dataset",
            "--output_dir",
            str(tmp_path / "whole"),
            "--dataloader_num_workers",
            "0",
        ]
    )
    assert whole["per_model"][0]["num_samples"] == len(ds) == 336


def test_clip_iqa_scores_are_p_good_averaged_over_crops(tiny_clip):
    from transformers import CLIPModel, CLIPTokenizer

    from mpiqe_hf.baselines import predict_clip_iqa

    clip, tokenizer = CLIPModel.from_pretrained(tiny_clip), CLIPTokenizer.from_pretrained(tiny_clip)
    pixel_values = torch.randn(2, 3, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    batch = {
        "pixel_values": pixel_values,
        "mos": torch.tensor([0.1, 0.9]),
        "index": torch.tensor([4, 7]),
        "skipped": [],
    }
    scores = predict_clip_iqa(clip, tokenizer, [batch])["score"]
    with torch.no_grad():
        text = clip.get_text_features(
            **tokenizer(["Good photo.", "Bad photo."], padding=True, return_tensors="pt")
        ).pooler_output
        for image in range(2):
            image_features = clip.get_image_features(pixel_values=pixel_values[image]).pooler_output
            similarity = torch.nn.functional.cosine_similarity(image_features[:, None], text[None], dim=-1)
            p_good = (clip.logit_scale.exp() * similarity).softmax(-1)[:, 0].mean()
            assert scores[image] == pytest.approx(p_good.item(), abs=1e-6)


def test_models_trained_on_folders_are_scored_on_their_validation_folder(tiny_clip, tmp_path):
    train_dir = write_blur_folder(tmp_path / "train", contents=3, seed=1)
    val_dir = write_blur_folder(tmp_path / "val", contents=2, seed=2)
    (val_dir / "images" / "c1_l2.png").write_bytes(b"garbage")
    out = tmp_path / "run"
    train_script.main(
        tiny_args(
            tiny_clip,
            out,
            "--train_dir",
            str(train_dir),
            "--validation_dir",
            str(val_dir),
            "--mos_range",
            "1",
            "5",
            "--skip_bad_samples",
            steps=1,
        )
    )
    summary = evaluate_script.main(
        [
            "--model_name_or_path",
            str(out),
            "--output_dir",
            str(tmp_path / "eval"),
            "--dataloader_num_workers",
            "0",
            "--skip_bad_samples",
            "--no_verify_images",
        ]
    )
    model = summary["per_model"][0]
    assert model["part"].startswith("the validation part of none") and model["num_samples"] == 7
    assert len(model["skipped"]) == 1 and "c1_l2.png" in model["skipped"][0]


def _ridge(features, targets, alpha):
    """Ridge on standardised features with an unpenalised intercept, by its normal equations."""
    mean, scale = features.mean(0), features.std(0)
    x = (features - mean) / scale
    coef = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ (targets - targets.mean()))
    return lambda new: (new - mean) / scale @ coef + targets.mean()


def test_ridge_probe_is_ridge_and_cross_validation_picks_the_strength():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 5)) * [1, 2, 3, 4, 5] + 7
    weights = np.array([0.5, -0.2, 0.1, 0.0, 0.3])
    clean = features @ weights
    new = rng.normal(size=(4, 5))
    probe = RidgeProbe(alphas=[3.0]).fit(features, clean)
    assert probe.alpha_ == 3.0 and probe.cv_mse_ == {}
    np.testing.assert_allclose(probe.predict(new), _ridge(features, clean, 3.0)(new), rtol=1e-9)
    # noiseless linear targets: the weakest strength; pure noise: the strongest (predict the mean)
    assert RidgeProbe(alphas=[0.01, 1.0, 1e6]).fit(features, clean).alpha_ == 0.01
    noise = RidgeProbe(alphas=[0.01, 1.0, 1e6]).fit(features, rng.normal(size=60))
    assert noise.alpha_ == 1e6 and noise.cv_mse_[1e6] < noise.cv_mse_[0.01]


def test_ridge_probe_folds_keep_groups_together_and_bad_input_is_named():
    groups = np.repeat(np.arange(6), 5)
    folds = RidgeProbe(num_folds=4)._folds(len(groups), groups)
    assert len(folds) == 4 and sorted(np.concatenate(folds).tolist()) == list(range(30))
    assert all(
        len(set(groups[fold]) & set(groups[other])) == 0 for fold in folds for other in folds if fold is not other
    )
    with pytest.raises(ValueError, match=r"features must be \(n, num_features\) and targets \(n,\)"):
        RidgeProbe().fit(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="needs at least 2 training images"):
        RidgeProbe().fit(np.zeros((3, 2)), np.zeros(3), groups=["a", "a", "a"])
    with pytest.raises(ValueError, match="Call fit before predict"):
        RidgeProbe().predict(np.zeros((1, 2)))


def test_linear_probe_fits_the_crop_averaged_clip_embedding(tiny_clip):
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    generator = torch.Generator().manual_seed(0)

    def batches(rows, seed):
        pixel_values = torch.randn(len(rows), 2, 3, 30, 30, generator=torch.Generator().manual_seed(seed))
        mos = torch.rand(len(rows), generator=generator)
        return [{"pixel_values": pixel_values, "mos": mos, "index": torch.tensor(rows), "skipped": []}]

    train, held_out = batches(list(range(12)), 1), batches([20, 21, 22], 2)
    embedded = clip_image_embeddings(clip, train)
    with torch.no_grad():
        crops = clip.get_image_features(pixel_values=train[0]["pixel_values"][3]).pooler_output
    expected = torch.nn.functional.normalize(crops, dim=-1).mean(0)
    np.testing.assert_allclose(embedded["embedding"][3], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert embedded["embedding"].shape == (12, clip.config.projection_dim)
    result = linear_probe(
        clip, train, held_out, content_ids={row: f"c{row % 4}" for row in range(12)}, alphas=[0.5, 50.0]
    )
    probe = RidgeProbe(alphas=[0.5, 50.0]).fit(
        embedded["embedding"], embedded["mos"], groups=[f"c{row % 4}" for row in range(12)]
    )
    target = clip_image_embeddings(clip, held_out)["embedding"]
    np.testing.assert_allclose(result["score"], probe.predict(target), rtol=1e-9)
    assert result["alpha"] == probe.alpha_ and result["num_train_images"] == 12
    assert result["index"].tolist() == [20, 21, 22] and "embedding" not in result
