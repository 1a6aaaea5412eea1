"""
What the text-side savings are worth: encoding the 20 class prompts cut to the longest real prompt against padding
them to CLIP's 77 positions, and scoring one image (8 crops) with text features computed once
(`model(crops, text_features=model.get_text_features())`) against computing them in every call (`model(crops)`).

The model has ViT-B/16 sizes and random weights; without a tokenizer each word of a class name stands in as one
token, a little shorter than CLIP's BPE (which splits "jpeg2000" into five tokens).

    python benchmarks/bench_text.py
"""

import argparse

import torch
from _common import describe_machine, print_table, time_side_by_side

from mpiqe_hf import MPIQEConfig, MPIQEModel


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args()


def padded_to_77(model):
    padded = MPIQEModel(model.config).to(model.device, model.dtype).eval()
    padded.load_state_dict(model.state_dict())
    eos = model.config.clip_config.text_config.eos_token_id
    for learner in (padded.scene_prompt_learner, padded.distortion_prompt_learner):
        token_ids = torch.full((learner.num_classes, 77), eos, dtype=torch.long, device=model.device)
        token_ids[:, : learner.token_ids.shape[1]] = learner.token_ids
        learner.token_ids = token_ids
    return padded


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    print(f"machine: {describe_machine(device)}")
    torch.manual_seed(0)
    model = MPIQEModel(MPIQEConfig()).to(device, getattr(torch, args.dtype)).eval()
    padded = padded_to_77(model)
    learners = (model.scene_prompt_learner, model.distortion_prompt_learner)
    length = max(learner.token_ids.shape[1] for learner in learners)
    crops = torch.randn(1, 8, 3, 224, 224, device=device, dtype=model.dtype)
    text_features = model.get_text_features()

    timings = time_side_by_side(
        {
            "truncated": model.get_text_features,
            "77": padded.get_text_features,
            "reused": lambda: model(crops, text_features=text_features),
            "recomputed": lambda: model(crops),
        },
        repeats=args.repeats,
        device=device,
    )
    print(f"\n{args.dtype}, median of {args.repeats} side-by-side rounds")
    print_table(
        ["work", "seconds", "ratio"],
        [
            [f"encode 20 prompts, {length} positions", f"{timings['truncated']:.3f}", ""],
            [
                "encode 20 prompts, 77 positions",
                f"{timings['77']:.3f}",
                f"{timings['77'] / timings['truncated']:.2f}x",
            ],
            ["score 1 image x 8 crops, text features given", f"{timings['reused']:.3f}", ""],
            [
                "score 1 image x 8 crops, text features computed in the call",
                f"{timings['recomputed']:.3f}",
                f"{timings['recomputed'] / timings['reused']:.2f}x",
            ],
        ],
    )


if __name__ == "__main__":
    main()
