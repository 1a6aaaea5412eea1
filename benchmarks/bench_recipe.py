#!/usr/bin/env python
"""
Recipe measurements on the pretrained stand-in CLIP (`make_standin_clip.py`):

1. `gradients`: the gradient norm of each loss term (scene, lambda_1 * distortion, lambda_2 * score), each term's own
   gradient through `torch.autograd.grad`, on the visual prompts and on the scene and distortion text contexts, at
   the start, middle and end of a per-crop training run on the embedded synthetic set (paper recipe: Adam, lr 3e-5,
   batch 64 crops, cosine after a warm-up of 5/30 of the run, as train.py clamps a short run), for each `score_loss_scale` given.
2. `srcc`: held-out SRCC of `examples/train.py`'s `main()` (content-disjoint split of a procedural `metadata.csv`
   dataset the stand-in never saw) per seed, for each training variant, beside the stand-in's zero-shot SRCC on the
   same held-out images.
3. `probe`: the same split scored by ridge regressions on the stand-in's frozen features (fitted on the training
   images; on the image embedding that is `evaluate.py --baselines`' linear probe, `mpiqe_hf.baselines`), at each
   strength and at the one chosen by cross-validation, beside its zero-shot SRCC: how far quality learned from the
   training contents carries to unseen ones.
4. `movement`: how far the same Adam steps at the same learning rate move the score with 64-wide encoders and
   image-text space, with 64-wide encoders and ViT-B/16's 512-wide image-text space, and with ViT-B/16's widths
   (random CLIPs of the stand-in's depth and input size).

    python benchmarks/bench_recipe.py gradients --clip standin-clip --scales 1 10 100
    python benchmarks/bench_recipe.py srcc --clip standin-clip --dataset procedural-iqa --seeds 0 1 2 \
        --variant "per_crop scale 1=--crop_sampling per_crop --config_overrides score_loss_scale=1"
    python benchmarks/bench_recipe.py probe --clip standin-clip --dataset procedural-iqa
    python benchmarks/bench_recipe.py --num_threads 2 movement --dataset procedural-iqa
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, get_cosine_schedule_with_warmup


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, print_table  # noqa: E402
from make_standin_clip import build_tokenizer, standin_clip_config, zero_shot_scores  # noqa: E402

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel  # noqa: E402
from mpiqe_hf.baselines import PROBE_ALPHAS, RidgeProbe, clip_image_embeddings  # noqa: E402
from mpiqe_hf.configuration_mpiqe import DISTORTION_CLASSES, SCENE_CLASSES  # noqa: E402
from mpiqe_hf.data import load_iqa_dataset, paper_splits  # noqa: E402
from mpiqe_hf.metrics import srcc  # noqa: E402


TERMS = ("scene", "distortion", "score")


def _labels(row):
    scene = torch.zeros(len(SCENE_CLASSES))
    for name in row["scene"] or []:
        scene[SCENE_CLASSES.index(name)] = 1.0
    distortion = DISTORTION_CLASSES.index(row["distortion"]) if row["distortion"] else -100
    return scene, distortion


class CropBatches:
    """Per-crop batches of the paper preset: each epoch visits every image `num_crops` times in a shuffled order,
    each visit one random crop as its own sample."""

    def __init__(self, dataset, indices, crop_size, num_crops=8, batch_size=64, seed=0):
        self.rows = [dataset[i] for i in indices]
        self.images = [row["image"].convert("RGB") for row in self.rows]
        self.labels = [_labels(row) for row in self.rows]
        self.processor = MPIQEImageProcessor(crop_size=crop_size, num_crops=1, crop_mode="random")
        self.num_crops, self.batch_size, self.seed = num_crops, batch_size, seed

    def steps_per_epoch(self):
        return math.ceil(len(self.rows) * self.num_crops / self.batch_size)

    def batch(self, visits, crop_seed):
        pixel_values = torch.cat(
            [
                self.processor(self.images[i], seed=crop_seed * 1_000_003 + n, return_tensors="pt")["pixel_values"]
                for n, i in enumerate(visits)
            ]
        )
        return dict(
            pixel_values=pixel_values,
            mos=torch.tensor([self.rows[i]["mos_normalized"] for i in visits], dtype=torch.float32),
            scene_labels=torch.stack([self.labels[i][0] for i in visits]),
            distortion_labels=torch.tensor([self.labels[i][1] for i in visits]),
        )

    def epoch(self, epoch):
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        visits = torch.arange(len(self.rows)).repeat(self.num_crops)[
            torch.randperm(len(self.rows) * self.num_crops, generator=generator)
        ]
        for step, start in enumerate(range(0, len(visits), self.batch_size)):
            yield self.batch(visits[start : start + self.batch_size].tolist(), crop_seed=epoch * 10_000 + step)


def term_gradient_norms(model, batch):
    """Norm of each weighted loss term's gradient on the visual prompts and on each text context."""
    targets = {
        "visual prompts": model.visual_prompts,
        "scene context": model.scene_prompt_learner.context,
        "distortion context": model.distortion_prompt_learner.context,
    }
    model.train()
    outputs = model(**batch)
    weighted = {
        "scene": outputs.scene_loss,
        "distortion": model.config.distortion_loss_weight * outputs.distortion_loss,
        "score": model.config.score_loss_weight * outputs.score_loss,
    }
    norms = {}
    for term, value in weighted.items():
        grads = torch.autograd.grad(value, list(targets.values()), retain_graph=True, allow_unused=True)
        for (name, _), grad in zip(targets.items(), grads):
            norms[(term, name)] = 0.0 if grad is None else grad.norm().item()
    losses = {term: value.item() for term, value in weighted.items()}
    return norms, losses


def run_gradients(args):
    dataset = load_iqa_dataset("synthetic", cache_dir=args.cache_dir)
    train_idx, _ = paper_splits(dataset, seed=0)[0]
    rows = []
    for scale in args.scales:
        torch.manual_seed(args.seed)
        model = MPIQEModel.from_clip(
            args.clip, visual_prompt_depth=4, window_size=4, score_loss_scale=scale, score_loss_weight=0.5
        )
        crop_size = model.config.clip_config.vision_config.image_size
        data = CropBatches(dataset, train_idx, crop_size, batch_size=args.batch_size, seed=args.seed)
        probe = data.batch(
            list(range(0, len(data.rows), max(1, len(data.rows) // args.batch_size)))[: args.batch_size], crop_seed=999
        )
        total_steps = args.epochs * data.steps_per_epoch()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
        scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, round(total_steps * 5 / 30)), total_steps)
        checkpoints = {0: "start", total_steps // 2: "middle", total_steps: "end"}
        step, start = 0, time.perf_counter()

        def record():
            norms, losses = term_gradient_norms(model, probe)
            for target in ("visual prompts", "scene context", "distortion context"):
                rows.append(
                    [f"{scale:g}", f"{checkpoints[step]} ({step})", target]
                    + [f"{norms[(term, target)]:.4f}" for term in TERMS]
                    + [
                        f"{norms[('score', target)] / max(norms[('scene', target)], norms[('distortion', target)]):.2f}"
                    ]
                )
            rows.append(
                [f"{scale:g}", f"{checkpoints[step]} ({step})", "loss value"]
                + [f"{losses[term]:.4f}" for term in TERMS]
                + [""]
            )

        record()
        for epoch in range(args.epochs):
            for batch in data.epoch(epoch):
                model.train()
                model(**batch).loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step in checkpoints:
                    record()
        print(f"scale {scale:g}: {total_steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\nGradient norm of each weighted term (scene, lambda_1 * distortion, lambda_2 * score with lambda_2 0.5) on "
        f"a fixed probe batch of {args.batch_size} crops; embedded set, {args.epochs} epochs, per-crop batches of "
        f"{args.batch_size}, Adam lr {args.learning_rate}; stand-in CLIP {args.clip}; {describe_machine(torch.device('cpu'))}"
    )
    print_table(["scale", "point (step)", "on", *TERMS, "score / max(other)"], rows)


# ---------------------------------------------------------------------------------------------------------------------


def images_and_mos(dataset, indices):
    """The decoded RGB images of `indices` of `dataset` and their normalised MOS, decoded once for every scorer."""
    rows = [dataset[int(i)] for i in indices]
    return [row["image"].convert("RGB") for row in rows], np.array([row["mos_normalized"] for row in rows])


def model_scores(model_dir, images, batch_size=32) -> np.ndarray:
    """The saved MP-IQE in `model_dir` scores `images` (grid crops of its processor), normalised to [0, 1]."""
    model = MPIQEModel.from_pretrained(model_dir).eval()
    processor = MPIQEImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        text_features = model.get_text_features()
        scores = torch.cat(
            [
                model(
                    processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"],
                    text_features=text_features,
                ).score
                for start in range(0, len(images), batch_size)
            ]
        )
    return scores.numpy().astype(np.float64)


def run_srcc(args):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import train as train_script

    dataset = load_iqa_dataset(args.dataset)
    train_idx, test_idx = paper_splits(dataset, seed=0)[0]
    clip, tokenizer = CLIPModel.from_pretrained(args.clip), CLIPTokenizer.from_pretrained(args.clip)
    held_out, training = images_and_mos(dataset, test_idx), images_and_mos(dataset, train_idx)
    zero_shot = srcc(zero_shot_scores(clip, tokenizer, held_out[0]), held_out[1])
    zero_shot_train = srcc(zero_shot_scores(clip, tokenizer, training[0]), training[1])
    print(
        f"held-out: {len(test_idx)} images of {args.dataset}; stand-in zero-shot SRCC {zero_shot:.4f} "
        f"(training images: {zero_shot_train:.4f})",
        flush=True,
    )
    results = {}
    for variant in args.variant:
        name, _, extra = variant.partition("=")
        for seed in args.seeds:
            output_dir = Path(args.work_dir) / f"{name.replace(' ', '_')}-seed{seed}"
            argv = [
                "--dataset_name",
                args.dataset,
                "--clip_model_name_or_path",
                args.clip,
                "--output_dir",
                str(output_dir),
                "--num_train_epochs",
                str(args.epochs),
                "--seed",
                str(seed),
                "--dataloader_num_workers",
                "0",
                *shlex.split(extra),
            ]
            start = time.perf_counter()
            metrics = train_script.main(argv)
            seconds = time.perf_counter() - start
            # The same model on its own training images: under-fitted (both low) or over-fitted (train high).
            fitted = srcc(model_scores(output_dir, training[0]), training[1])
            results.setdefault(name, []).append((seed, metrics["srcc"], metrics["step"], seconds, fitted))
            print(
                f"RESULT {name} seed {seed}: held-out SRCC {metrics['srcc']:.4f} (training images {fitted:.4f}) "
                f"after {metrics['step']} steps ({seconds:.0f} s)",
                flush=True,
            )
            Path(args.work_dir, "results.json").write_text(json.dumps({"zero_shot": zero_shot, "runs": results}))
    rows = []
    for name, runs in results.items():
        values = [run[1] for run in runs]
        rows.append(
            [
                name,
                *(f"{value:.3f}" for value in values),
                f"{np.mean(values):.3f}",
                f"{np.mean(values) - zero_shot:+.3f}",
                f"{np.mean([run[4] for run in runs]):.3f}",
                str(runs[0][2]),
            ]
        )
    print(
        f"\nHeld-out SRCC after {args.epochs} epochs of examples/train.py (seeds {args.seeds}); stand-in zero-shot "
        f"{zero_shot:.3f} on the same {len(test_idx)} images ({zero_shot_train:.3f} on the training images); "
        f"{describe_machine(torch.device('cpu'))}"
    )
    print_table(
        ["variant", *(f"seed {s}" for s in args.seeds), "mean", "vs zero-shot", "mean on training images", "steps"],
        rows,
    )


def frozen_features(clip, images, mos, crop_size, batch_size=32):
    """Per image (8 grid crops averaged): the library's linear-probe feature (`clip_image_embeddings`: the normalised
    CLIP image embedding), and token statistics (post-LN CLS, mean and spread of the post-LN patch tokens, spread of
    the patch tokens after each inner layer)."""
    processor = MPIQEImageProcessor(crop_size=crop_size, num_crops=8)
    batches = [
        {
            "pixel_values": processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"],
            "mos": torch.as_tensor(mos[start : start + batch_size], dtype=torch.float32),
            "index": torch.arange(start, min(start + batch_size, len(images))),
            "skipped": [],
        }
        for start in range(0, len(images), batch_size)
    ]
    statistics = []
    with torch.no_grad():
        for crops in (batch["pixel_values"][i] for batch in batches for i in range(len(batch["pixel_values"]))):
            outputs = clip.vision_model(pixel_values=crops, output_hidden_states=True)
            tokens = clip.vision_model.post_layernorm(outputs.last_hidden_state)
            parts = [tokens[:, 0], tokens[:, 1:].mean(1), tokens[:, 1:].std(1)]
            parts += [hidden[:, 1:].std(1) for hidden in outputs.hidden_states[1:-1]]
            statistics.append(torch.cat(parts, dim=-1).mean(0))
    return clip_image_embeddings(clip, batches)["embedding"], torch.stack(statistics).numpy()


def ridge_srcc(train_x, train_y, test_x, test_y, alphas, groups=None):
    """The library's `RidgeProbe` (standardised features, unpenalised intercept; the strength chosen by
    cross-validation when `alphas` has several) fitted on train; its strength and SRCC on train and test."""
    probe = RidgeProbe(alphas=alphas).fit(train_x, train_y, groups=groups)
    return probe.alpha_, srcc(probe.predict(train_x), train_y), srcc(probe.predict(test_x), test_y)


def run_probe(args):
    """How well quality learned from the training contents carries to the held-out ones on the stand-in's own frozen
    features: ridge regressions beside the zero-shot SRCC."""
    dataset = load_iqa_dataset(args.dataset)
    train_idx, test_idx = paper_splits(dataset, seed=0)[0]
    clip, tokenizer = CLIPModel.from_pretrained(args.clip).eval(), CLIPTokenizer.from_pretrained(args.clip)
    crop_size = clip.config.vision_config.image_size
    parts = {}
    for name, indices in (("train", train_idx), ("held-out", test_idx)):
        images, mos = images_and_mos(dataset, indices)
        zero_shot = srcc(zero_shot_scores(clip, tokenizer, images), mos)
        parts[name] = (*frozen_features(clip, images, mos, crop_size), mos, zero_shot)
    # The folds of the cross-validated strength keep a content together, as the split does.
    groups = [dataset[int(i)]["content_id"] for i in train_idx] if "content_id" in dataset.column_names else None
    rows = [["zero-shot (Good photo. / Bad photo.)", "", f"{parts['train'][3]:.3f}", f"{parts['held-out'][3]:.3f}"]]
    for column, name in ((0, "image embedding"), (1, "token statistics")):
        for alphas in [[strength] for strength in args.strengths] + [list(PROBE_ALPHAS)]:
            alpha, fitted, held_out = ridge_srcc(
                parts["train"][column],
                parts["train"][2],
                parts["held-out"][column],
                parts["held-out"][2],
                alphas,
                groups,
            )
            chosen = f"{alpha:g}" if len(alphas) == 1 else f"{alpha:g} (5-fold CV)"
            rows.append([f"ridge on the {name}", chosen, f"{fitted:.3f}", f"{held_out:.3f}"])
    print(
        f"\nStand-in {args.clip} on {args.dataset}: {len(train_idx)} training and {len(test_idx)} held-out images "
        f"(paper split, content-disjoint); {describe_machine(torch.device('cpu'))}"
    )
    print_table(["scorer", "ridge strength", "SRCC train", "SRCC held-out"], rows)


def widened_standin_config(vision_width: int, text_width: int, projection_dim: int):
    """
    The stand-in's `CLIPConfig` (4 vision layers on 64-px inputs) at other widths: encoders wider than the stand-in's
    64 get heads of 64 channels and MLPs 4x, as ViT-B/16.
    """
    tokenizer = build_tokenizer()
    config = standin_clip_config(tokenizer, projection_dim)
    text, vision = config.text_config.to_dict(), config.vision_config.to_dict()
    for encoder, width in ((text, text_width), (vision, vision_width)):
        if width != encoder["hidden_size"]:
            encoder.update(hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim), tokenizer


def run_movement(args):
    """
    How far the same number of Adam steps at the same learning rate moves the score at widths (vision, text,
    image-text space) of 64 / 64 / 64, 64 / 64 / 512 and ViT-B/16's 768 / 512 / 512, random CLIPs of the stand-in's
    depth and input size: the spread of the trained model's scores over the held-out images (a fresh model scores
    every image 0.5).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import train as train_script

    dataset = load_iqa_dataset(args.dataset)
    _, test_idx = paper_splits(dataset, seed=0)[0]
    images, _ = images_and_mos(dataset, test_idx)
    rows = []
    for name, widths in (
        ("all 64 wide (64 / 64 / 64)", (64, 64, 64)),
        ("the stand-in's: ViT-B/16's image-text space (64 / 64 / 512)", (64, 64, 512)),
        ("ViT-B/16's widths (768 / 512 / 512)", (768, 512, 512)),
    ):
        clip_dir = Path(args.work_dir) / f"random-clip-{'-'.join(map(str, widths))}"
        config, tokenizer = widened_standin_config(*widths)
        torch.manual_seed(args.seed)
        CLIPModel(config).save_pretrained(clip_dir)
        tokenizer.save_pretrained(clip_dir)
        output_dir = Path(args.work_dir) / f"run-{'-'.join(map(str, widths))}"
        start = time.perf_counter()
        metrics = train_script.main(
            [
                "--dataset_name",
                args.dataset,
                "--clip_model_name_or_path",
                str(clip_dir),
                "--output_dir",
                str(output_dir),
                "--max_train_steps",
                str(args.steps),
                "--learning_rate",
                str(args.learning_rate),
                "--seed",
                str(args.seed),
                "--dataloader_num_workers",
                "0",
            ]
        )
        seconds = time.perf_counter() - start
        scores = model_scores(output_dir, images)
        rows.append(
            [
                name,
                f"{scores.std():.4f}",
                f"{np.abs(scores - 0.5).mean():.4f}",
                f"{metrics['train_score_loss']:.3f}",
                f"{seconds:.0f}",
            ]
        )
        print(f"RESULT {name}: score spread {scores.std():.4f}", flush=True)
    print(
        f"\n{args.steps} Adam steps at lr {args.learning_rate:g} (paper preset otherwise) on {args.dataset}, random "
        f"CLIPs; scores of the {len(images)} held-out images; {describe_machine(torch.device('cpu'))}"
    )
    print_table(["trainable parts at", "score spread (sd)", "mean |score - 0.5|", "train score loss", "s"], rows)
    for row in rows[1:]:
        print(f"{row[0]} ÷ {rows[0][0]}, score spread: {float(row[1]) / max(float(rows[0][1]), 1e-12):.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--num_threads", type=int, default=1, help="torch threads; 1 is fastest for the tiny stand-in on a shared CPU."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    grads = sub.add_parser("gradients")
    grads.add_argument("--clip", required=True, help="Folder of the stand-in CLIP.")
    grads.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    grads.add_argument("--epochs", type=int, default=5)
    grads.add_argument("--batch_size", type=int, default=64)
    grads.add_argument("--learning_rate", type=float, default=3e-5)
    grads.add_argument("--seed", type=int, default=0)
    grads.add_argument("--cache_dir", default=None)
    scores = sub.add_parser("srcc")
    scores.add_argument("--clip", required=True)
    scores.add_argument("--dataset", required=True, help="A procedural metadata.csv folder.")
    scores.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    scores.add_argument("--epochs", type=int, default=5)
    scores.add_argument(
        "--variant", action="append", required=True, help="'name=extra train.py arguments'; repeat for each variant."
    )
    scores.add_argument("--work_dir", default="recipe-runs")
    probe = sub.add_parser("probe")
    probe.add_argument("--clip", required=True)
    probe.add_argument("--dataset", required=True, help="A procedural metadata.csv folder.")
    probe.add_argument("--strengths", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0, 1000.0])
    movement = sub.add_parser("movement")
    movement.add_argument("--dataset", required=True, help="A procedural metadata.csv folder.")
    movement.add_argument("--steps", type=int, default=60)
    movement.add_argument("--learning_rate", type=float, default=3e-5)
    movement.add_argument("--seed", type=int, default=0)
    movement.add_argument("--work_dir", default="recipe-movement")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    commands = {"gradients": run_gradients, "srcc": run_srcc, "probe": run_probe, "movement": run_movement}
    commands[args.command](args)


if __name__ == "__main__":
    main()
