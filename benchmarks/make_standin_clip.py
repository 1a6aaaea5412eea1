#!/usr/bin/env python
"""
A pretrained stand-in for CLIP, made in a few CPU minutes, so that recipe decisions rest on a backbone whose
features carry quality signal (a random CLIP gives none; real CLIP weights cannot be downloaded here).

The stand-in is a tiny `CLIPModel` (4 vision layers on 64-px inputs with 16-px patches, as ViT-B/16 sees a 64-px
region; DCT-initialised patch filters; 2 text layers; encoders of width 64; ViT-B/16's 512-wide image-text space, in
which MP-IQE's decoder and score head run, so that the paper's learning rate moves them as it does on ViT-B/16)
trained contrastively on 64-px crops of the photos the embedded synthetic set uses (scikit-image's) and of procedural
pictures, each distorted with the synthetic set's 11 families at 5 levels and captioned with its distortion, its
strength, its quality band and the side of the scale's middle it lies on ("a bad, strongly blurry photo.", "a bad
photo with blur.", "bad photo.", "good photo."). Its tokenizer is a `CLIPTokenizer` whose BPE merges spell every
caption word and class name as one token. `MPIQEModel.from_clip(folder)` and `examples/train.py
--clip_model_name_or_path folder` load the saved folder.

    python benchmarks/make_standin_clip.py --output_dir standin-clip          # about 13 min on 2 cores
    python benchmarks/make_standin_clip.py --output_dir standin-clip --dataset_dir procedural-iqa

It prints the zero-shot SRCC (CLIP-IQA's "Good photo." / "Bad photo." antonym prompts) on procedural pictures
whose contents it never saw, and with `--dataset_dir` writes such pictures as a `metadata.csv` dataset
(`write_procedural_dataset`). Everything is deterministic per `--seed`.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mpiqe_hf import MPIQEImageProcessor
from mpiqe_hf.configuration_mpiqe import DISTORTION_CLASSES, QUALITY_LEVELS, SCENE_CLASSES
from mpiqe_hf.data.synthetic import NUM_LEVELS, REFERENCES, distort, load_reference, pseudo_mos
from mpiqe_hf.metrics import srcc


IMAGE_SIZE = 64
PATCH_SIZE = 16
ANTONYM_PROMPTS = ("Good photo.", "Bad photo.")

# Seed streams: contents used for pretraining and contents kept unseen (zero-shot check, procedural datasets).
PRETRAIN_STREAM = 0
UNSEEN_STREAM = 1

ADJECTIVES = {
    "jpeg2000 compression": "ringing",
    "jpeg compression": "blocky",
    "noise": "noisy",
    "blur": "blurry",
    "color": "discoloured",
    "contrast": "faded",
    "overexposure": "overexposed",
    "underexposure": "underexposed",
    "spatial": "pixelated",
    "quantization": "posterized",
    "other": "shifted",
}
ADVERBS = ("slightly", "mildly", "moderately", "strongly", "extremely")
STRENGTHS = ("slight", "mild", "moderate", "strong", "extreme")


def quality_word(mos: float) -> str:
    """The quality band of a pseudo-MOS on 1..5: five equal bands named by `QUALITY_LEVELS` (bad .. excellent)."""
    band = min(len(QUALITY_LEVELS) - 1, int((mos - 1.0) / 4.0 * len(QUALITY_LEVELS)))
    return QUALITY_LEVELS[band]


def captions(family: str | None, level: int) -> list[str]:
    """Every caption that describes an image with `family` at `level` (`None`, 0: the pristine picture)."""
    mos = pseudo_mos(family, level)
    quality = quality_word(mos)
    # The antonym pair ("good photo." above the middle of the 1..5 scale, "bad photo." below) orders every kind on
    # one axis; the five band words alone leave "excellent" pictures no nearer "good" than "bad".
    antonym = "good photo." if mos >= 3.0 else "bad photo."
    texts = list(dict.fromkeys([f"{quality} photo.", f"a {quality} photo.", antonym]))
    if family is None:
        return texts + ["a clean photo.", "a pristine photo without distortion."]
    return texts + [
        f"a {quality}, {ADVERBS[level - 1]} {ADJECTIVES[family]} photo.",
        f"a {quality} photo with {family}.",
        f"a photo with {STRENGTHS[level - 1]} {family}.",
    ]


def distortion_keys() -> list[tuple[str | None, int]]:
    """The 56 `(family, level)` kinds of image: the pristine picture, then 11 families x 5 levels."""
    return [(None, 0)] + [(family, level) for family in DISTORTION_CLASSES for level in range(1, NUM_LEVELS + 1)]


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Words the way CLIP's pre-tokenizer splits lowercase text: letter runs, single digits, punctuation runs."""
    out, current, kind = [], "", None
    for char in text.lower():
        char_kind = "letter" if char.isalpha() else "digit" if char.isdigit() else None if char.isspace() else "other"
        if char_kind is None or char_kind == "digit" or char_kind != kind:
            if current:
                out.append(current)
            current, kind = "", None
        if char_kind == "digit":
            out.append(char)
        elif char_kind is not None:
            current, kind = current + char, char_kind
    if current:
        out.append(current)
    return out


def build_tokenizer() -> CLIPTokenizer:
    """
    A `CLIPTokenizer` whose vocabulary holds every single character (alone and word-final) and, through BPE merges
    learnt here on the caption and class-name words, each of those words as one token.
    """
    texts = [caption for key in distortion_keys() for caption in captions(*key)]
    texts += [name.replace("_", " ") + "." for name in (*SCENE_CLASSES, *DISTORTION_CLASSES)]
    texts += list(ANTONYM_PROMPTS) + [f"{level} photo." for level in QUALITY_LEVELS]
    words = sorted({word for text in texts for word in _words(text)})

    vocab = {}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789.,-'":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    # Byte-pair merges, most frequent pair first (ties in sorted order), until every word is a single symbol.
    spelled = [tuple(word[:-1]) + (word[-1] + "</w>",) for word in words]
    merges = []
    while any(len(symbols) > 1 for symbols in spelled):
        pairs = Counter(pair for symbols in spelled for pair in zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        merged = []
        for symbols in spelled:
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged.append(tuple(out))
        spelled = merged
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"the stand-in vocabulary spells {word!r} as {ids}"
    return tokenizer


def standin_clip_config(tokenizer: CLIPTokenizer, projection_dim: int = 512) -> CLIPConfig:
    special = dict(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    return CLIPConfig(
        text_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            **special,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
        ),
        projection_dim=projection_dim,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------------------


def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng([int(key) for key in keys])


def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def procedural_picture(seed: int, stream: int = UNSEEN_STREAM, size: tuple[int, int] = (160, 160)) -> Image.Image:
    """
    A synthetic "photo" of `size` (width, height): a smooth coloured background (gradient or low-frequency noise),
    textured patches (stripes, checks, fine noise) and sharp-edged shapes, so that blur, noise, blocking or colour
    changes are visible in every 64-px crop. Deterministic in `(seed, stream)`.
    """
    rng = _rng(20261129, stream, seed)
    width, height = size
    if rng.random() < 0.5:
        a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0
        background = a * (1 - t[..., None]) + b * t[..., None]
    else:
        coarse = rng.integers(0, 256, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
        background = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), float)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))

    for _ in range(rng.integers(2, 5)):  # textured patches
        w, h = int(rng.integers(width // 4, width // 2)), int(rng.integers(height // 4, height // 2))
        left, top = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        yy, xx = np.mgrid[0:h, 0:w]
        kind = rng.integers(3)
        if kind == 0:
            period, angle = rng.uniform(3, 12), rng.uniform(0, math.pi)
            pattern = 0.5 + 0.5 * np.sin(2 * math.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        elif kind == 1:
            cell = int(rng.integers(3, 10))
            pattern = ((xx // cell + yy // cell) % 2).astype(float)
        else:
            pattern = rng.random((h, w))
        a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
        patch = a * (1 - pattern[..., None]) + b * pattern[..., None]
        image.paste(Image.fromarray(patch.astype(np.uint8)), (left, top))

    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 10)):  # sharp shapes
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng), outline=_colour(rng), width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        elif kind == 2:
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(rng.integers(3, 6))]
            draw.polygon(points, fill=_colour(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=_colour(rng), width=int(rng.integers(1, 5)))
    if rng.random() < 0.3:  # some pictures have soft regions, as photos with depth of field do
        image = Image.composite(image, image.filter(ImageFilter.GaussianBlur(1.5)), _soft_mask(rng, width, height))
    return image


def _soft_mask(rng, width, height) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    ImageDraw.Draw(mask).ellipse((x0, y0, x0 + width // 2, y0 + height // 2), fill=255)
    return mask


def distorted_versions(picture: Image.Image, seed: int, content: str):
    """Yields `(family, level, image)` for the pristine picture and the 55 distorted versions of the synthetic set."""
    yield None, 0, picture
    for family in DISTORTION_CLASSES:
        for level in range(1, NUM_LEVELS + 1):
            rng = np.random.default_rng(list(f"{seed}|{content}|{family}|{level}".encode()))
            yield family, level, distort(picture, family, level, rng)


def write_procedural_dataset(
    folder,
    num_contents: int = 12,
    seed: int = 0,
    stream: int = UNSEEN_STREAM,
    min_side: int = 128,
    max_side: int = 224,
) -> Path:
    """
    Writes `num_contents` procedural pictures x 56 versions (pristine + 11 families x 5 levels) as PNG files with a
    `metadata.csv` (`file_name`, `mos` = the synthetic set's pseudo-MOS on 1..5, `distortion`, `content_id`) that
    `load_iqa_dataset(folder)` and `examples/train.py --dataset_name folder` read. Picture sizes vary between
    `min_side` and `max_side`. Contents of the default stream are never seen by the stand-in's pretraining.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(num_contents):
        size_rng = _rng(7, stream, seed, index)
        size = tuple(int(s) for s in size_rng.integers(min_side, max_side + 1, size=2))
        content = f"proc{seed}_{index:03d}"
        picture = procedural_picture(seed * 100_003 + index, stream, size)
        for family, level, image in distorted_versions(picture, seed, content):
            family_index = 0 if family is None else DISTORTION_CLASSES.index(family) + 1
            name = f"images/{content}_{family_index:02d}_{level}.png"
            image.save(folder / name, format="PNG", compress_level=1)
            rows.append((name, pseudo_mos(family, level), family or "", content))
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file_name", "mos", "distortion", "content_id"])
        writer.writerows(rows)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# Contrastive pretraining
# ---------------------------------------------------------------------------------------------------------------------


def dct_patch_filters(hidden_size: int, patch_size: int) -> torch.Tensor:
    """
    Patch-embedding filters `(hidden_size, 3, patch_size, patch_size)` made of 2-D DCT bases: luminance bases over
    low to high frequencies and a few colour-opponent ones, each with the L2 norm of CLIP's random initialisation.
    Frequency-selective first-layer filters, as trained CNNs and ViTs grow, make noise, blocking and blur visible
    from the first step; training the stand-in from random filters learns them too slowly for a few CPU minutes.
    """

    def basis(u, v):
        grid = (2 * torch.arange(patch_size, dtype=torch.float32) + 1) * math.pi / (2 * patch_size)
        return torch.outer(torch.cos(grid * u), torch.cos(grid * v))

    num_colour = hidden_size // 4
    frequencies = torch.linspace(0, patch_size - 1, math.isqrt(hidden_size - num_colour)).round().long().tolist()
    luminance = [(u, v) for u in frequencies for v in frequencies]
    luminance += [(u, u) for u in range(hidden_size - num_colour - len(luminance))]
    colour_frequencies = [(u, v) for u in (0, 1, 2, 4) for v in (0, 1, 2, 4)]
    filters = []
    for u, v in luminance:
        filters.append(basis(u, v).expand(3, -1, -1) / math.sqrt(3))
    for index in range(num_colour):
        u, v = colour_frequencies[(index // 2) % len(colour_frequencies)]
        opponent = torch.tensor([1.0, -1.0, 0.0]) if index % 2 == 0 else torch.tensor([0.5, 0.5, -1.0])
        filters.append(opponent.view(3, 1, 1) * basis(u, v))
    weight = torch.stack(filters)
    return weight / weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.02 * math.sqrt(3 * patch_size**2)


def _pretraining_pool(seed: int, num_procedural: int, references=tuple(REFERENCES)):
    """uint8 tensors `(3, H, W)` of every version of every pretraining content, and each one's kind index."""
    keys = distortion_keys()
    pictures = [(name, load_reference(name)) for name in references]
    for index in range(num_procedural):
        size = tuple(int(s) for s in _rng(7, PRETRAIN_STREAM, seed, index).integers(96, 193, size=2))
        pictures.append((f"pretrain{index}", procedural_picture(seed * 100_003 + index, PRETRAIN_STREAM, size)))
    images, kinds = [], []
    for content, picture in pictures:
        for family, level, image in distorted_versions(picture, seed, content):
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            kinds.append(keys.index((family, level)))
    return images, torch.tensor(kinds)


def _normalise(crops_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (crops_uint8.float() / 255.0 - mean) / std


def _random_crops(images, picks, generator) -> torch.Tensor:
    crops = []
    for index in picks.tolist():
        image = images[index]
        _, height, width = image.shape
        top = int(torch.randint(0, height - IMAGE_SIZE + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - IMAGE_SIZE + 1, (1,), generator=generator))
        crop = image[:, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    return _normalise(torch.stack(crops))


def pretrain(
    model: CLIPModel,
    tokenizer: CLIPTokenizer,
    images,
    kinds,
    steps: int,
    batch_size: int,
    seed: int,
    learning_rate: float = 1e-3,
    log_every: int = 100,
):
    """
    CLIP's symmetric contrastive loss, with every caption that describes an image's kind counted as its match (a
    batch holds many images of the same kind, and "bad photo." fits several kinds).
    """
    keys = distortion_keys()
    texts = sorted({caption for key in keys for caption in captions(*key)})
    fits = torch.tensor([[text in captions(*key) for key in keys] for text in texts])  # (num_texts, num_kinds)
    kind_texts = [[texts.index(caption) for caption in captions(*key)] for key in keys]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.05)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)),
    )
    model.train()
    for step in range(steps):
        picks = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch_kinds = kinds[picks]
        text_ids = torch.tensor(
            [
                kind_texts[k][int(torch.randint(0, len(kind_texts[k]), (1,), generator=generator))]
                for k in batch_kinds.tolist()
            ]
        )
        outputs = model(
            input_ids=encoded["input_ids"][text_ids],
            attention_mask=encoded["attention_mask"][text_ids],
            pixel_values=_random_crops(images, picks, generator),
        )
        match = fits[text_ids][:, batch_kinds].float()  # (text i, image j): caption i describes image j
        logits = outputs.logits_per_image  # (image, text)
        image_loss = -(match.t() / match.t().sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
        text_loss = -(match / match.sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
        loss = (image_loss + text_loss) / 2
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps}: contrastive loss {loss.item():.3f}", flush=True)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Zero-shot quality (CLIP-IQA)
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def zero_shot_scores(model: CLIPModel, tokenizer, images, num_crops: int = 8, batch_size: int = 64) -> np.ndarray:
    """
    CLIP-IQA's zero-shot quality: softmax over ("Good photo.", "Bad photo.") of the crop embedding's similarities,
    the probability of "Good photo." averaged over `num_crops` grid crops (the crops MP-IQE evaluates on).
    """
    model.eval()
    text = tokenizer(list(ANTONYM_PROMPTS), padding=True, return_tensors="pt")
    crop_size = model.config.vision_config.image_size
    processor = MPIQEImageProcessor(crop_size=crop_size, num_crops=num_crops)
    text_embeds = None
    scores = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        outputs = model(pixel_values=pixel_values.flatten(0, 1), **text)
        text_embeds = outputs.text_embeds if text_embeds is None else text_embeds
        probabilities = outputs.logits_per_image.softmax(dim=-1)[:, 0]
        scores.append(probabilities.view(-1, num_crops).mean(dim=1))
    return torch.cat(scores).numpy().astype(np.float64)


def unseen_zero_shot_srcc(model, tokenizer, num_contents: int = 8, seed: int = 0) -> float:
    """Zero-shot SRCC against the pseudo-MOS on `num_contents` procedural contents the pretraining never saw."""
    images, mos = [], []
    for index in range(num_contents):
        size = tuple(int(s) for s in _rng(7, UNSEEN_STREAM, seed, index).integers(128, 225, size=2))
        picture = procedural_picture(seed * 100_003 + index, UNSEEN_STREAM, size)
        for family, level, image in distorted_versions(picture, seed, f"unseen{index}"):
            images.append(image)
            mos.append(pseudo_mos(family, level))
    return srcc(zero_shot_scores(model, tokenizer, images), np.asarray(mos))


# ---------------------------------------------------------------------------------------------------------------------


def build_standin_clip(
    output_dir,
    seed: int = 0,
    steps: int = 28800,
    batch_size: int = 32,
    num_procedural: int = 384,
    learning_rate: float = 1e-3,
    log_every: int = 100,
    references=tuple(REFERENCES),
    projection_dim: int = 512,
) -> Path:
    """
    Builds, pretrains and saves the stand-in CLIP (`CLIPModel` + `CLIPTokenizer`) into `output_dir`: `steps`
    contrastive steps of `batch_size` crops drawn from the 56 versions of the scikit-image photos `references` (the
    embedded synthetic set's) and of `num_procedural` procedural pictures.
    """
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(standin_clip_config(tokenizer, projection_dim))
    embedding = model.vision_model.embeddings.patch_embedding
    with torch.no_grad():
        embedding.weight.copy_(dct_patch_filters(embedding.out_channels, embedding.kernel_size[0]))
    images, kinds = _pretraining_pool(seed, num_procedural, references)
    pretrain(
        model,
        tokenizer,
        images,
        kinds,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        log_every=log_every,
    )
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder for the CLIPModel and its CLIPTokenizer.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=28800, help="Contrastive training steps.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_procedural", type=int, default=384, help="Procedural pretraining contents.")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument(
        "--projection_dim",
        type=int,
        default=512,
        help="Width of the shared image-text space, in which MP-IQE's decoder and score head run.",
    )
    parser.add_argument(
        "--dataset_dir",
        default=None,
        help="Also write an unseen procedural metadata.csv dataset here (--dataset_contents pictures).",
    )
    parser.add_argument("--dataset_contents", type=int, default=12)
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch threads; 1 is fastest for this tiny model on a shared CPU (and bit-reproducible).",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)

    start = time.perf_counter()
    output_dir = build_standin_clip(
        args.output_dir,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        num_procedural=args.num_procedural,
        learning_rate=args.learning_rate,
        projection_dim=args.projection_dim,
    )
    built = time.perf_counter() - start
    model, tokenizer = CLIPModel.from_pretrained(output_dir), CLIPTokenizer.from_pretrained(output_dir)
    zero_shot = unseen_zero_shot_srcc(model, tokenizer, seed=args.seed)
    print(f"stand-in CLIP saved to {output_dir} in {built:.0f} s ({torch.get_num_threads()} torch threads)")
    print(f"zero-shot SRCC (Good/Bad photo.) on 8 unseen procedural contents x 56 versions: {zero_shot:.3f}")
    if args.dataset_dir is not None:
        folder = write_procedural_dataset(args.dataset_dir, num_contents=args.dataset_contents, seed=args.seed)
        print(f"unseen procedural dataset: {folder} ({args.dataset_contents * 56} images)")


if __name__ == "__main__":
    main()
