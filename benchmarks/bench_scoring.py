"""
End-to-end `mpiqe-score` throughput against the model alone, in one run, on KonIQ-sized JPEGs.

A random MP-IQE model with ViT-B/16 sizes (no download) is saved with its default image processor (8 crops of
224 x 224); `--num_images` JPEGs of 1024 x 768 (KonIQ-10k's size) are written to a temporary folder. Then, in this
order:

1. end to end: `mpiqe-score FOLDER -m MODEL -o scores.csv` in a child process, in its default dtype, workers and batch
   size, timed from start to exit (Python start-up and model loading included);
2. model only: the same scorer in this process, in the same dtype and batch size, on the crops of the same images
   (decoded and cropped beforehand, untimed). Target: end-to-end / model-only images per second >= 0.9 on a CPU,
   >= 0.8 on a GPU;
3. processes: `torchrun --standalone --nproc_per_node N -m mpiqe_hf.cli` on the same folder, against step 1;
4. memory: peak resident memory (the command or its loader workers) scoring a quarter of the images (at least
   two full batches) and all of them with a small MP-IQE (2 layers of width 64 on 224 crops), whose own memory would not hide held images
   (a decoded image is 2.3 MiB, its crops 4.6 MiB). Rows are not held, so it should not grow with the images;
5. bf16 / fp32: the scorer's time on one batch in each dtype, side by side, against a bare matmul's bf16 / fp32 in the
   same run (the hardware's bound). Target: within 1.10x of the matmul's ratio.

    python benchmarks/bench_scoring.py                                  # CPU, 200 images, 2 processes
    python benchmarks/bench_scoring.py --num_images 48 --skip processes  # a quick look
    python benchmarks/bench_scoring.py --device cuda --num_workers 8    # GPU

The machine should be otherwise idle: every figure is a wall-clock time.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from _common import describe_machine, print_table, time_side_by_side
from PIL import Image
from transformers import CLIPConfig

from mpiqe_hf import MPIQEConfig, MPIQEImageProcessor, MPIQEModel, load_image
from mpiqe_hf.cli.scoring import TorchScorer, resolve_dtype


STEPS = ("end_to_end", "processes", "memory", "dtypes")
PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", type=int, default=2, help="processes of the torchrun step")
    parser.add_argument("--batch_size", type=int, default=16, help="the CLI's default")
    parser.add_argument("--num_workers", type=int, default=None, help="loader workers (default: the CLI's)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the bf16 / fp32 comparison")
    parser.add_argument("--skip", nargs="*", default=[], choices=STEPS)
    parser.add_argument("--workdir", default=None, help="keep the model and images here (default: a temporary one)")
    return parser.parse_args()


def write_jpegs(folder, count, seed=0):
    """Smooth random scenes with increasing noise, 1024 x 768, JPEG quality 90."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        path = os.path.join(folder, f"{index:05d}.jpg")
        if os.path.exists(path):
            continue
        base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((1024, 768), Image.BICUBIC)
        noise = rng.normal(0, 40 * index / max(1, count - 1), (768, 1024, 3))
        pixels = np.clip(np.asarray(base, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)


def save_model(folder, config):
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    torch.manual_seed(0)
    MPIQEModel(config).save_pretrained(folder)
    MPIQEImageProcessor().save_pretrained(folder)


def small_config():
    """A narrow, shallow MP-IQE on 224 x 224 crops: its memory is small next to what holding images would cost."""
    side = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    clip = CLIPConfig(
        text_config=dict(
            side, vocab_size=1000, max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999
        ),
        vision_config=dict(side, image_size=224, patch_size=32),
        projection_dim=64,
    )
    return MPIQEConfig(
        clip_config=clip.to_dict(),
        visual_prompt_depth=2,
        window_size=3,
        decoder_heads=4,
        decoder_intermediate_size=128,
    )


def run_timed(command, env=None):
    """(seconds, peak resident MiB of the command and its children) of a child process that must succeed."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds, int(result.stdout.strip().splitlines()[-1]) / 1024


def cli_command(inputs, model, output, args, *extra):
    command = [shutil.which("mpiqe-score"), *inputs, "-m", model, "-o", output, "--device", args.device]
    command += ["-b", str(args.batch_size)]
    if args.num_workers is not None:
        command += ["--num-workers", str(args.num_workers)]
    return command + list(extra)


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scoring-")
    model_dir, image_dir = os.path.join(workdir, "model"), os.path.join(workdir, "images")
    save_model(model_dir, MPIQEConfig())
    write_jpegs(image_dir, args.num_images)
    images = sorted(os.listdir(image_dir))[: args.num_images]
    if len(images) != args.num_images or len(os.listdir(image_dir)) != args.num_images:
        raise SystemExit(f"{image_dir} must hold exactly {args.num_images} images; use a fresh --workdir")
    dtype, reason = resolve_dtype("auto", device)
    print(f"machine: {describe_machine(device)}")
    print(
        f"{args.num_images} JPEGs of 1024 x 768; ViT-B/16-sized random MP-IQE, 8 crops of 224; default dtype "
        f"{str(dtype).replace('torch.', '')} ({reason}); batch {args.batch_size}"
    )

    results = {}
    if "end_to_end" not in args.skip:
        output = os.path.join(workdir, "scores.csv")
        seconds, _ = run_timed(cli_command([image_dir], model_dir, output, args, "--overwrite"))
        results["cli"] = args.num_images / seconds

        scorer = TorchScorer(MPIQEModel.from_pretrained(model_dir), device, dtype)
        processor = MPIQEImageProcessor.from_pretrained(model_dir)
        crops = [
            processor(load_image(os.path.join(image_dir, name)), return_tensors="pt")["pixel_values"][0]
            for name in images
        ]
        start = time.perf_counter()
        for first in range(0, len(crops), args.batch_size):
            scorer.score_batch(torch.stack(crops[first : first + args.batch_size]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        results["model"] = args.num_images / (time.perf_counter() - start)
        del crops, scorer
        ratio = results["cli"] / results["model"]
        target = 0.8 if device.type == "cuda" else 0.9
        print("\nEnd to end vs model only")
        print_table(
            ["mpiqe-score img/s", "model-only img/s", "ratio", "target", "met"],
            [
                [
                    f"{results['cli']:.3f}",
                    f"{results['model']:.3f}",
                    f"{ratio:.3f}",
                    f">= {target}",
                    "yes" if ratio >= target else "no",
                ]
            ],
        )

    if "processes" not in args.skip and "cli" in results:
        output = os.path.join(workdir, "scores-torchrun.csv")
        command = [
            shutil.which("torchrun"),
            "--standalone",
            "--nproc_per_node",
            str(args.processes),
            "-m",
            "mpiqe_hf.cli",
            *cli_command([image_dir], model_dir, output, args, "--overwrite")[1:],
        ]
        seconds, _ = run_timed(command)
        multi = args.num_images / seconds
        print(f"\n{args.processes} processes vs 1 (torchrun; each process gets the CPUs / processes as threads)")
        print_table(
            ["processes", "img/s", "vs 1 process"],
            [[1, f"{results['cli']:.3f}", "1.000"], [args.processes, f"{multi:.3f}", f"{multi / results['cli']:.3f}"]],
        )

    if "memory" not in args.skip:
        small_dir = os.path.join(workdir, "small-model")
        save_model(small_dir, small_config())
        rows = []
        peaks = []
        for count in (min(args.num_images, max(2 * args.batch_size, args.num_images // 4)), args.num_images):
            listing = os.path.join(workdir, f"list-{count}.txt")
            with open(listing, "w") as handle:
                handle.writelines(os.path.join(image_dir, name) + "\n" for name in images[:count])
            output = os.path.join(workdir, f"scores-memory-{count}.jsonl")
            command = cli_command(["--paths-from", listing], small_dir, output, args, "--overwrite")
            seconds, peak = run_timed(command)
            peaks.append(peak)
            rows.append([count, f"{peak:.0f}", f"{peak / peaks[0]:.3f}"])
        print(
            "\nPeak resident memory (the command or one of its workers, whichever is larger); a small MP-IQE, 8 crops"
        )
        print_table(["images", "peak MiB", "vs fewest"], rows)

    if "dtypes" not in args.skip:
        model = MPIQEModel.from_pretrained(model_dir)
        fp32 = TorchScorer(model, device, torch.float32)
        bf16 = TorchScorer(MPIQEModel.from_pretrained(model_dir), device, torch.bfloat16)
        batch = torch.randn(2, 8, 3, 224, 224)
        left, right = torch.randn(1608, 768, device=device), torch.randn(768, 3072, device=device)
        left16, right16 = left.bfloat16(), right.bfloat16()
        timings = time_side_by_side(
            {
                "fp32": lambda: fp32.score_batch(batch),
                "bf16": lambda: bf16.score_batch(batch),
                "matmul fp32": lambda: [left @ right for _ in range(20)],
                "matmul bf16": lambda: [left16 @ right16 for _ in range(20)],
            },
            repeats=args.repeats,
            device=device,
        )
        scoring = timings["bf16"] / timings["fp32"]
        matmul = timings["matmul bf16"] / timings["matmul fp32"]
        print("\nbf16 / fp32 (2 images x 8 crops; 20 matmuls 1608x768 @ 768x3072), side by side")
        print_table(
            ["fp32 s", "bf16 s", "scoring bf16/fp32", "matmul bf16/fp32", "scoring / matmul", "target", "met"],
            [
                [
                    f"{timings['fp32']:.3f}",
                    f"{timings['bf16']:.3f}",
                    f"{scoring:.3f}",
                    f"{matmul:.3f}",
                    f"{scoring / matmul:.3f}",
                    "<= 1.10",
                    "yes" if scoring / matmul <= 1.10 else "no",
                ]
            ],
        )
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
