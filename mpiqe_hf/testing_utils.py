"""Small random CLIPs shaped like the Hub's `openai/clip-vit-base-patch16`, with CLIP's real BPE tokenizer.

No pretrained weights or tokenizer files can be downloaded on offline machines and CI, so tests build their CLIP the
way transformers' own model tests do, at small widths, but with every value of the real `config.json` that changes
what MP-IQE computes: the 49,408-token vocabulary, 77 positions, `quick_gelu`, the 512-wide image-text space, CLIP's
initial logit scale and the **legacy special ids** the Hub's openai configs still carry (`bos_token_id` 0,
`eos_token_id` 2, `pad_token_id` 1, which are the characters `!`, `"` and `#` for CLIP's tokenizer). The tokenizer is
CLIP's own byte-pair encoding, rebuilt from the merges file that the `open_clip_torch` wheel ships.

How the fixtures still differ from the real artefact (a fixture tidier than the real thing hides bugs):
- widths and depths: 32-wide towers with 2 layers each, where ViT-B/16 has a 512-wide text tower and a 768-wide vision
  tower of 12 layers each; `hub_clip_config(full_size=True)` has the real ones, for a forward at full size;
- images: 30-px crops in 2-px patches (a 15 x 15 grid, which also exercises eq. 10's uneven windows) where the real
  model reads 224-px crops in 16-px patches (14 x 14); `full_size=True` and `image_size=224, patch_size=16` give those;
- weights: random, so `logit_scale` is the config's initial ln(1 / 0.07) = 2.6592, where the trained checkpoint holds
  ln 100 = 4.6052; `save_tiny_clip(..., logit_scale=math.log(100))` sets the trained value;
- tokenizer files: `vocab.json` and `merges.txt` hold what the Hub's copies hold (256 byte symbols, the same with
  `</w>`, the 48,894 merges joined, then `<|startoftext|>` 49406 and `<|endoftext|>` 49407); the Hub repo also has a
  `tokenizer.json` and a `tokenizer_config.json`, which transformers builds from these two files with the same
  settings (lower-casing, 77 as the model's maximum length, `<|endoftext|>` as padding).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer


#: Where the BPE merges come from: the `open_clip_torch` wheel ships OpenAI's file (MIT licence) as package data.
OPEN_CLIP_REQUIREMENT = "open_clip_torch==3.3.0"
OPEN_CLIP_BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
#: CLIP's tokenizer keeps 49,152 - 256 - 2 merges of the file (OpenAI's `simple_tokenizer.py` reads lines 1 to 48,894
#: after the header) so that bytes, word-final bytes, merges and the two special tokens make 49,408 entries.
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
CLIP_START_TOKEN, CLIP_END_TOKEN = "<|startoftext|>", "<|endoftext|>"

#: The values of `openai/clip-vit-base-patch16`'s `config.json` that shape what MP-IQE computes.
HUB_TEXT_CONFIG = dict(
    vocab_size=CLIP_VOCAB_SIZE,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
HUB_VISION_CONFIG = dict(hidden_act="quick_gelu")
HUB_PROJECTION_DIM = 512
HUB_LOGIT_SCALE_INIT = 2.6592
HUB_FULL_SIZE_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
HUB_FULL_SIZE_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
)


def _cache_dir() -> Path:
    root = os.environ.get("MPIQE_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mpiqe_hf"
    )
    return Path(root) / "clip-bpe"


def _byte_symbols() -> list[str]:
    """The 256 printable symbols that stand for the bytes 0-255 in CLIP's (and GPT-2's) byte-level BPE, in CLIP's
    vocabulary order: bytes that are printable Latin-1 characters stand for themselves and come first, in byte order;
    the other bytes follow, mapped to the code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def _download_bpe_merges() -> list[str]:
    """Fetches the `open_clip_torch` wheel (without installing it: its dependencies would move torch) and returns the
    merge lines of its BPE file."""
    with tempfile.TemporaryDirectory() as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", download_dir]
        result = subprocess.run([*command, OPEN_CLIP_REQUIREMENT], capture_output=True, text=True)
        wheels = list(Path(download_dir).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"Could not fetch {OPEN_CLIP_REQUIREMENT}, whose wheel carries CLIP's BPE merges for the test "
                f"tokenizer (`pip download` exit {result.returncode}: {result.stderr.strip()[-500:]}). Run "
                f"`pip download --no-deps {OPEN_CLIP_REQUIREMENT}` where the package index is reachable and set "
                f"MPIQE_HF_CACHE, or copy vocab.json and merges.txt into {_cache_dir()}."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            packed = wheel.read(OPEN_CLIP_BPE_MEMBER)
    lines = gzip.GzipFile(fileobj=io.BytesIO(packed)).read().decode("utf-8").split("\n")
    return lines[1 : 1 + CLIP_NUM_MERGES]


def clip_bpe_tokenizer_files() -> Path:
    """
    A folder with CLIP's `vocab.json` and `merges.txt`, built once from the `open_clip_torch` wheel and cached under
    `$MPIQE_HF_CACHE/clip-bpe` (default `~/.cache/mpiqe_hf/clip-bpe`). Raises `RuntimeError` naming the way out
    where the wheel cannot be fetched.
    """
    folder = _cache_dir()
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    merges = _download_bpe_merges()
    symbols = _byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + [merge.replace(" ", "") for merge in merges]
    tokens += [CLIP_START_TOKEN, CLIP_END_TOKEN]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"{OPEN_CLIP_BPE_MEMBER} gave {len(tokens)} tokens instead of CLIP's {CLIP_VOCAB_SIZE}.")
    folder.mkdir(parents=True, exist_ok=True)
    # Written under temporary names and renamed, so that parallel test processes never read half a file.
    for name, text in (
        ("merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n"),
        ("vocab.json", json.dumps({token: index for index, token in enumerate(tokens)}, ensure_ascii=False)),
    ):
        partial = folder / f"{name}.{os.getpid()}.partial"
        partial.write_text(text, encoding="utf-8")
        partial.replace(folder / name)
    return folder


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's real tokenizer (`openai/clip-vit-base-patch16`'s vocabulary and merges), built offline; see
    [`clip_bpe_tokenizer_files`]."""
    return CLIPTokenizer.from_pretrained(clip_bpe_tokenizer_files(), model_max_length=77)


def hub_clip_config(
    vision_layers: int = 2,
    text_layers: int = 2,
    image_size: int = 30,
    patch_size: int = 2,
    full_size: bool = False,
    projection_dim: int = HUB_PROJECTION_DIM,
) -> CLIPConfig:
    """
    A `CLIPConfig` with the values of `openai/clip-vit-base-patch16`'s `config.json` (legacy special ids included)
    at small widths: 32-wide towers with `text_layers` / `vision_layers` layers, `image_size`-px crops in
    `patch_size`-px patches. `full_size=True` gives ViT-B/16's own widths, depths and 224-px crops in 16-px patches;
    `projection_dim` narrows the image-text space (512 in every openai ViT-B CLIP).
    """
    if full_size:
        text, vision = dict(HUB_FULL_SIZE_TEXT), dict(HUB_FULL_SIZE_VISION)
    else:
        text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=text_layers, num_attention_heads=4)
        vision = dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        )
    return CLIPConfig(
        text_config={**HUB_TEXT_CONFIG, **text},
        vision_config={**HUB_VISION_CONFIG, **vision},
        projection_dim=projection_dim,
        logit_scale_init_value=HUB_LOGIT_SCALE_INIT,
    )


def save_tiny_clip(
    directory: str | os.PathLike, seed: int = 7, logit_scale: float | None = None, **config_kwargs
) -> str:
    """Writes a random `CLIPModel` of [`hub_clip_config`] (`config_kwargs` go to it) and CLIP's real tokenizer to
    `directory`, usable as `--clip_model_name_or_path`; `logit_scale` sets the log of the logit scale (the trained
    checkpoint's is ln 100). Returns the directory."""
    torch.manual_seed(seed)
    clip = CLIPModel(hub_clip_config(**config_kwargs))
    if logit_scale is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(logit_scale)
    clip.save_pretrained(directory)
    clip_tokenizer().save_pretrained(directory)
    return os.fspath(directory)


__all__ = ["clip_tokenizer", "clip_bpe_tokenizer_files", "hub_clip_config", "save_tiny_clip"]
