"""
Cost of one MP-IQE training step (forward, backward, Adam step) against one scoring forward on the same batch, and
peak memory of a training step with and without gradient checkpointing.

CLIP stays frozen, so the backward pass only carries gradients through its activations to the visual prompts and
computes no weight gradients for it. Target: training step / scoring forward <= 2.5.

    python benchmarks/bench_training.py                                   # CPU, 2 images x 8 crops
    python benchmarks/bench_training.py --device cuda --batch_size 64     # the paper's batch of 64 x 8 crops
"""

import argparse
import json
import subprocess
import sys

import torch
from _common import describe_machine, print_table, time_side_by_side

from mpiqe_hf import MPIQEConfig, MPIQEModel


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--num_crops", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory_probe", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    return parser.parse_args()


def build(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = MPIQEModel(MPIQEConfig()).to(device, getattr(torch, args.dtype))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-5)
    pixel_values = torch.randn(args.batch_size, args.num_crops, 3, 224, 224, device=device, dtype=model.dtype)
    labels = dict(
        mos=torch.rand(args.batch_size, device=device),
        scene_labels=torch.nn.functional.one_hot(torch.arange(args.batch_size) % 9, 9).float().to(device),
        distortion_labels=(torch.arange(args.batch_size, device=device) % 11),
    )
    return model, optimizer, pixel_values, labels


def training_step(model, optimizer, pixel_values, labels):
    model.train()
    loss = model(pixel_values, **labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def scoring_forward(model, pixel_values):
    model.eval()
    with torch.inference_mode():
        model(pixel_values)


def peak_memory_of_training_step(args):
    """Runs in a fresh process so that the peak belongs to this configuration alone."""
    model, optimizer, pixel_values, labels = build(args)
    if args.memory_probe == "checkpointing":
        model.activation_checkpointing_enable()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        training_step(model, optimizer, pixel_values, labels)
        return torch.cuda.max_memory_allocated(device)
    # VmHWM is the peak resident size of this address space (ru_maxrss would carry the parent's peak across exec);
    # the step's own share is what it adds on top of the built model.
    peak_before = _peak_resident_bytes()
    training_step(model, optimizer, pixel_values, labels)
    return _peak_resident_bytes() - peak_before


def _peak_resident_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM: peak memory is measured on Linux only")


def main():
    args = parse_args()
    if args.memory_probe:
        print(json.dumps({"peak_bytes": peak_memory_of_training_step(args)}))
        return
    device = torch.device(args.device)
    print(f"machine: {describe_machine(device)}")
    model, optimizer, pixel_values, labels = build(args)
    timings = time_side_by_side(
        {
            "train": lambda: training_step(model, optimizer, pixel_values, labels),
            "score": lambda: scoring_forward(model, pixel_values),
        },
        repeats=args.repeats,
        device=device,
    )
    ratio = timings["train"] / timings["score"]
    print(f"\n{args.batch_size} images x {args.num_crops} crops, {args.dtype}, median of {args.repeats} rounds")
    print_table(
        ["training step s", "scoring forward s", "ratio", "target", "met"],
        [
            [
                f"{timings['train']:.3f}",
                f"{timings['score']:.3f}",
                f"{ratio:.3f}",
                "<= 2.5",
                "yes" if ratio <= 2.5 else "NO",
            ]
        ],
    )

    peaks = {}
    for probe in ("plain", "checkpointing"):
        command = [sys.executable, __file__, "--memory_probe", probe, "--device", args.device]
        command += ["--batch_size", str(args.batch_size), "--num_crops", str(args.num_crops), "--dtype", args.dtype]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        peaks[probe] = json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]
    kind = "GPU max allocated" if device.type == "cuda" else "peak RSS added by the step"
    print(f"\nPeak memory of one training step ({kind})")
    print_table(
        ["gradient checkpointing", "peak GiB"],
        [["off", f"{peaks['plain'] / 2**30:.2f}"], ["on", f"{peaks['checkpointing'] / 2**30:.2f}"]],
    )
    print(f"checkpointing / plain: {peaks['checkpointing'] / peaks['plain']:.3f}")


if __name__ == "__main__":
    main()
