"""
How well the quality maps localise: on images whose left or right half alone is distorted, the share of each map's
mass that falls on the distorted half (0.5 = no localisation), and how often it is the larger share.

The images are built from the embedded synthetic set: for every reference photo and distortion family, the left
(or right) half of the photo at the family's strongest level next to the other half of the pristine photo. The
model is a trained checkpoint (e.g. the tiny-CLIP run of docs/training.md); the same measurement on the untrained
model of the same config is the control. Crops: the smallest grid of the processor that covers every pixel.

    python benchmarks/bench_localisation.py --model_dir tiny10 [--cache_dir DIR]
"""

import argparse
import statistics

import numpy as np
import torch

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.data import load_iqa_dataset
from mpiqe_hf.image_processing_mpiqe import grid_crop_positions
from mpiqe_hf.quality_map_mpiqe import compute_quality_maps


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--cache_dir", default=None, help="where the synthetic set is built (default: the library's)")
    return parser.parse_args()


def covering_num_crops(height, width, crop_height, crop_width):
    """The smallest number of grid crops whose union is the whole image."""
    for num_crops in range(1, 1025):
        covered = np.zeros((height, width), dtype=bool)
        for top, left in grid_crop_positions(height, width, crop_height, crop_width, num_crops):
            covered[top : top + crop_height, left : left + crop_width] = True
        if covered.all():
            return num_crops
    raise ValueError(f"no grid of up to 1024 crops covers a {height}x{width} image")


def half_distorted_images(dataset):
    """`(image, distorted_side, family)` for every reference photo, family and side."""
    names = dataset.features["distortion"].names
    pristine, strongest = {}, {}
    for row in dataset:
        content, label = row["content_id"], row["distortion"]
        family = names[label] if label >= 0 else None
        if family is None:
            pristine[content] = np.asarray(row["image"].convert("RGB"))
        elif family not in strongest.get(content, {}) or row["mos"] < strongest[content][family][0]:
            strongest.setdefault(content, {})[family] = (row["mos"], np.asarray(row["image"].convert("RGB")))
    for content, clean in pristine.items():
        half = clean.shape[1] // 2
        for family, (_, distorted) in sorted(strongest[content].items()):
            for side in ("left", "right"):
                mixed = clean.copy()
                columns = slice(0, half) if side == "left" else slice(half, None)
                mixed[:, columns] = distorted[:, columns]
                yield mixed, side, family


def distorted_share(quality_map, side):
    values = quality_map.double()
    half = values.shape[1] // 2
    part = values[:, :half] if side == "left" else values[:, half:]
    total = values.sum()
    return float(part.sum() / total) if total > 0 else 0.5


def measure(model, processor, samples):
    shares = {"gradcam": [], "windows": []}
    families = []
    for image, side, family in samples:
        height, width = image.shape[:2]
        num_crops = covering_num_crops(height, width, processor.crop_size["height"], processor.crop_size["width"])
        pixel_values = processor(image, num_crops=num_crops, return_tensors="pt")["pixel_values"]
        maps = compute_quality_maps(model, pixel_values, [(height, width)])
        shares["gradcam"].append(distorted_share(maps.gradcam_maps[0], side))
        shares["windows"].append(distorted_share(maps.distortion_maps[0], side))
        families.append(family)
    return shares, families


def summary(values):
    return f"{statistics.mean(values):.3f}", f"{np.mean(np.array(values) > 0.5):.0%}"


def main():
    args = parse_args()
    torch.manual_seed(0)
    dataset = load_iqa_dataset("synthetic", cache_dir=args.cache_dir)
    samples = list(half_distorted_images(dataset))
    trained = MPIQEModel.from_pretrained(args.model_dir).eval()
    processor = MPIQEImageProcessor.from_pretrained(args.model_dir)
    untrained = MPIQEModel(trained.config).eval()
    height, width = samples[0][0].shape[:2]
    crop = (processor.crop_size["height"], processor.crop_size["width"])
    print(
        f"{len(samples)} half-distorted images ({height}x{width} and alike), {crop[0]}x{crop[1]} crops "
        f"covering each image ({covering_num_crops(height, width, *crop)} for the first)"
    )

    results = {
        name: measure(model, processor, samples) for name, model in (("trained", trained), ("untrained", untrained))
    }
    print("\n| model | map | mean share on the distorted half | share > 0.5 |")
    print("|---|---|---|---|")
    for name, (shares, _) in results.items():
        for kind, values in shares.items():
            mean, rate = summary(values)
            print(f"| {name} | {kind} | {mean} | {rate} |")

    shares, families = results["trained"]
    print(
        "\nTrained model, by distortion family:\n\n| family | Grad-CAM share | Grad-CAM > 0.5 | windows share | windows > 0.5 |"
    )
    print("|---|---|---|---|---|")
    for family in sorted(set(families)):
        picked = [index for index, name in enumerate(families) if name == family]
        gradcam = summary([shares["gradcam"][index] for index in picked])
        windows = summary([shares["windows"][index] for index in picked])
        print(f"| {family} | {gradcam[0]} | {gradcam[1]} | {windows[0]} | {windows[1]} |")


if __name__ == "__main__":
    main()
