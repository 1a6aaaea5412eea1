"""
ONNX deployment: onnxruntime fp32 and dynamic int8 against torch fp32 and bf16, per image, side by side; and how
closely each follows torch fp32's scores over varied images.

ViT-B/16 sizes and random weights (no download), one image = 8 crops of 224 x 224. The graph is exported by
`mpiqe_hf.export_onnx.export_onnx` (text features as constants) and quantised by `quantize_onnx`.

    python benchmarks/bench_onnx.py [--repeats 5] [--agreement_images 16] [--work_dir /tmp/mpiqe-onnx-bench]
"""

import argparse
import os
import time

import numpy as np
import torch
from _common import describe_machine, print_table, time_side_by_side
from bench_inference import varied_images
from scipy.stats import spearmanr

from mpiqe_hf import MPIQEConfig, MPIQEModel
from mpiqe_hf.export_onnx import OnnxQualityScorer, export_onnx


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_crops", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agreement_images", type=int, default=16)
    parser.add_argument("--work_dir", default="/tmp/mpiqe-onnx-bench")
    return parser.parse_args()


def build_model():
    """ViT-B/16 MP-IQE; the trainable parts drawn with std 0.05 so that scores of different images spread."""
    torch.manual_seed(0)
    model = MPIQEModel(MPIQEConfig()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and not name.endswith("norm.weight"):
                param.normal_(std=0.05)
    return model


def main():
    args = parse_args()
    torch.set_grad_enabled(False)
    device = torch.device("cpu")
    print(f"machine: {describe_machine(device)}")
    model = build_model()
    start = time.perf_counter()
    export = export_onnx(model, args.work_dir, quantize=True)
    print(
        f"export + int8 quantisation: {time.perf_counter() - start:.1f} s; "
        f"model.onnx {os.path.getsize(export['onnx']) / 2**20:.0f} MiB, "
        f"model_int8.onnx {os.path.getsize(export['onnx_int8']) / 2**20:.0f} MiB"
    )
    threads = torch.get_num_threads()
    fp32 = OnnxQualityScorer(args.work_dir, num_threads=threads)
    int8 = OnnxQualityScorer(args.work_dir, quantized=True, num_threads=threads)
    bf16_model = build_model().to(torch.bfloat16)

    crops = torch.randn(1, args.num_crops, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    crops_np, crops_bf16 = crops.numpy(), crops.to(torch.bfloat16)
    seconds = time_side_by_side(
        {
            "torch fp32": lambda: model(crops),
            "torch bf16": lambda: bf16_model(crops_bf16),
            "onnxruntime fp32": lambda: fp32.run(crops_np),
            "onnxruntime int8": lambda: int8.run(crops_np),
        },
        repeats=args.repeats,
        device=device,
    )
    base = seconds["torch fp32"]
    print(f"\nper image ({args.num_crops} crops of 224 x 224), median of {args.repeats} alternating rounds:")
    print_table(
        ["backend", "s / image", "÷ torch fp32"],
        [[name, f"{value:.3f}", f"{value / base:.2f}"] for name, value in seconds.items()],
    )

    images = varied_images(args.agreement_images * args.num_crops).view(
        args.agreement_images, args.num_crops, 3, 224, 224
    )
    reference = torch.cat([model(images[index : index + 1]).score for index in range(len(images))]).numpy()
    candidates = {
        "torch bf16": torch.cat(
            [bf16_model(images[index : index + 1].to(torch.bfloat16)).score.float() for index in range(len(images))]
        ).numpy(),
        "onnxruntime fp32": np.concatenate(
            [fp32.run(images[index : index + 1].numpy())["score"] for index in range(len(images))]
        ),
        "onnxruntime int8": np.concatenate(
            [int8.run(images[index : index + 1].numpy())["score"] for index in range(len(images))]
        ),
    }
    print(f"\nscore agreement with torch fp32 over {len(images)} varied images (score std {reference.std():.3f}):")
    rows = []
    for name, scores in candidates.items():
        rows.append([name, f"{np.abs(scores - reference).max():.2e}", f"{spearmanr(scores, reference)[0]:.4f}"])
    rows.append(
        [
            "int8 vs onnxruntime fp32",
            f"{np.abs(candidates['onnxruntime int8'] - candidates['onnxruntime fp32']).max():.2e}",
            f"{spearmanr(candidates['onnxruntime int8'], candidates['onnxruntime fp32'])[0]:.4f}",
        ]
    )
    print_table(["scores", "max abs diff (normalised)", "SRCC"], rows)


if __name__ == "__main__":
    main()
