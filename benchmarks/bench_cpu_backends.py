"""
Scoring on a CPU, every way `mpiqe-score` can: torch eager and `--compile` (torch.compile) in float32 and bfloat16,
onnxruntime float32 and dynamic int8; per image, side by side in one run, each against torch eager float32. Beside
them, a bare matmul in bfloat16 and float32, so that the model's bf16 / fp32 ratio can be read against what the
hardware gives (a CPU without AMX gains far less from bf16 than one with it).

ViT-B/16 sizes and random weights (no download; the trainable parts drawn with std 0.05 so that scores spread), one
image = `--num_crops` crops of 224 x 224, `--batch_size` images per call, through the scorers the command uses
(`TorchScorer`, `OnnxQualityScorer`). The compiled scorers compile on their first call (timed, reported: it depends
on inductor's cache in /tmp/torchinductor_$USER, cold on a fresh machine); the timed calls reuse that compile. The
score agreement is over the same images: compiled against eager in each dtype, int8 against onnxruntime fp32.

    python benchmarks/bench_cpu_backends.py [--batch_size 2] [--num_crops 8] [--repeats 3]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from _common import describe_machine, print_table, time_side_by_side
from bench_inference import varied_images
from bench_onnx import build_model

from mpiqe_hf.cli.scoring import TorchScorer
from mpiqe_hf.export_onnx import OnnxQualityScorer, export_onnx


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=2, help="images per call")
    parser.add_argument("--num_crops", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--work_dir", default=None, help="where the ONNX export goes (default: a temporary folder)")
    return parser.parse_args()


def main():
    args = parse_args()
    torch.set_grad_enabled(False)
    device = torch.device("cpu")
    print(f"machine: {describe_machine(device)}; load average {os.getloadavg()[0]:.1f} at the start")
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench-cpu-backends-")
    export = export_onnx(build_model(), work_dir, quantize=True)
    print(f"ONNX export and int8 quantisation in {work_dir} (fp32 vs torch max abs diff {export['max_abs_diff']:.1e})")

    threads = torch.get_num_threads()
    scorers = {
        "torch eager fp32": TorchScorer(build_model(), device, torch.float32),
        "torch eager bf16": TorchScorer(build_model(), device, torch.bfloat16),
        "torch compiled fp32": TorchScorer(build_model(), device, torch.float32, compile=True),
        "torch compiled bf16": TorchScorer(build_model(), device, torch.bfloat16, compile=True),
        "onnxruntime fp32": OnnxQualityScorer(work_dir, num_threads=threads),
        "onnxruntime int8": OnnxQualityScorer(work_dir, quantized=True, num_threads=threads),
    }
    crops = varied_images(args.batch_size * args.num_crops).view(args.batch_size, args.num_crops, 3, 224, 224)

    scores = {}
    for name, scorer in scorers.items():
        start = time.perf_counter()
        scores[name] = scorer.score_batch(crops).normalized_score
        if "compiled" in name:
            print(f"{name}: first call (compiles) {time.perf_counter() - start:.1f} s")

    left, right = torch.randn(1608, 768), torch.randn(768, 3072)
    left16, right16 = left.bfloat16(), right.bfloat16()
    functions = {name: (lambda scorer=scorer: scorer.score_batch(crops)) for name, scorer in scorers.items()}
    functions["matmul fp32"] = lambda: [left @ right for _ in range(20)]
    functions["matmul bf16"] = lambda: [left16 @ right16 for _ in range(20)]
    seconds = time_side_by_side(functions, repeats=args.repeats, device=device)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")

    base = seconds["torch eager fp32"]
    print(
        f"\nper image ({args.batch_size} images x {args.num_crops} crops of 224 x 224 a call), median of "
        f"{args.repeats} alternating rounds:"
    )
    print_table(
        ["backend", "s / image", "÷ torch eager fp32"],
        [[name, f"{seconds[name] / args.batch_size:.3f}", f"{seconds[name] / base:.2f}"] for name in scorers],
    )

    print("\nbf16 ÷ fp32 time, same run (matmul: 20 x 1608x768 @ 768x3072, ViT-B/16's MLP on 8 crops):")
    print_table(
        ["work", "bf16 ÷ fp32"],
        [
            ["bare matmul", f"{seconds['matmul bf16'] / seconds['matmul fp32']:.3f}"],
            ["torch eager", f"{seconds['torch eager bf16'] / seconds['torch eager fp32']:.3f}"],
            ["torch compiled", f"{seconds['torch compiled bf16'] / seconds['torch compiled fp32']:.3f}"],
        ],
    )

    print(f"\nscore agreement over these {args.batch_size} images (normalised scale):")
    pairs = [
        ("torch compiled fp32", "torch eager fp32"),
        ("torch compiled bf16", "torch eager bf16"),
        ("torch eager bf16", "torch eager fp32"),
        ("onnxruntime fp32", "torch eager fp32"),
        ("onnxruntime int8", "onnxruntime fp32"),
    ]
    print_table(
        ["scores", "against", "max abs diff"],
        [[name, other, f"{np.abs(scores[name] - scores[other]).max():.2e}"] for name, other in pairs],
    )


if __name__ == "__main__":
    main()
