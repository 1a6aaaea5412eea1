"""The tiny random CLIP that tests, smoke runs and `examples/train.py --clip_config_name tiny` use.

No pretrained weights or tokenizer files can be assumed (offline machines, CI), so the tests build a CLIP the way
transformers' own model tests do: hidden size 32, two layers per tower, 30-px images in 2-px patches (a 15 x 15 patch
grid), and a character-level byte-pair vocabulary that spells any lowercase class name.
"""

from __future__ import annotations

import os
import string

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

TINY_VOCAB_SIZE = 99


def tiny_tokenizer_vocab() -> dict[str, int]:
    """Byte-pair vocabulary covering lowercase words, '.' and '-': each character alone and word-final, plus the
    start and end tokens (58 entries, below `TINY_VOCAB_SIZE`)."""
    vocab = {}
    for symbol in string.ascii_lowercase + ".-":
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def tiny_clip_config(vision_layers: int = 2, text_layers: int = 2, image_size: int = 30, patch_size: int = 2):
    """A `CLIPConfig` with hidden size 32 and projection 32; token ids match [`tiny_tokenizer_vocab`]."""
    vocab = tiny_tokenizer_vocab()
    return CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            vocab_size=TINY_VOCAB_SIZE,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=32,
    )


def save_tiny_clip(directory: str | os.PathLike, seed: int = 7, **config_kwargs) -> str:
    """Writes a random tiny `CLIPModel` and its `CLIPTokenizer` to `directory` (usable as
    `--clip_model_name_or_path`); `config_kwargs` go to [`tiny_clip_config`]. Returns the directory."""
    torch.manual_seed(seed)
    CLIPModel(tiny_clip_config(**config_kwargs)).save_pretrained(directory)
    CLIPTokenizer(vocab=tiny_tokenizer_vocab(), merges=[]).save_pretrained(directory)
    return os.fspath(directory)


__all__ = ["TINY_VOCAB_SIZE", "tiny_tokenizer_vocab", "tiny_clip_config", "save_tiny_clip"]
