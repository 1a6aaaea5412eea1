"""Shared fixtures: tiny random CLIP configs (transformers' own testing trick) and a tiny CLIP tokenizer."""

import string

import pytest
import torch
from transformers import CLIPConfig

from mpiqe_hf import MPIQEConfig, MPIQEModel

TINY_VOCAB_SIZE = 99


def tiny_tokenizer_vocab():
    """Byte-pair vocabulary covering lowercase words and '.': each character, alone and word-final."""
    symbols = list(string.ascii_lowercase + ".-")
    vocab = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


class MPIQEModelTester:
    """Builds tiny MP-IQE configs and inputs: hidden size 32, image 30, patch 2 (a 15 x 15 patch grid)."""

    def __init__(self, vision_layers=2, text_layers=2, image_size=30, patch_size=2, batch_size=2, num_crops=3):
        self.vision_layers = vision_layers
        self.text_layers = text_layers
        self.image_size = image_size
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.num_crops = num_crops

    def clip_config(self):
        vocab = tiny_tokenizer_vocab()
        return CLIPConfig(
            text_config=dict(
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=self.text_layers,
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
                num_hidden_layers=self.vision_layers,
                num_attention_heads=4,
                image_size=self.image_size,
                patch_size=self.patch_size,
            ),
            projection_dim=32,
        )

    def config(self, **overrides):
        settings = dict(
            clip_config=self.clip_config().to_dict(),
            visual_prompt_depth=self.vision_layers,
            window_size=3,
            decoder_heads=4,
            decoder_intermediate_size=37,
        )
        settings.update(overrides)
        return MPIQEConfig(**settings)

    def model(self, seed=0, **overrides):
        """A model whose trainable parts are scaled up from their (tiny) initialisation, so that every input and
        prompt moves the score by far more than float rounding."""
        torch.manual_seed(seed)
        model = MPIQEModel(self.config(**overrides)).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and not name.endswith("norm.weight"):
                    param.normal_(std=0.3)
        return model

    def pixel_values(self, seed=1, batch_size=None, num_crops=None):
        generator = torch.Generator().manual_seed(seed)
        shape = (batch_size or self.batch_size, num_crops or self.num_crops, 3, self.image_size, self.image_size)
        return torch.randn(shape, generator=generator)


@pytest.fixture
def tester():
    return MPIQEModelTester()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A local folder with a tiny random CLIPModel and its CLIPTokenizer, usable as `clip_model_name_or_path`."""
    from transformers import CLIPModel, CLIPTokenizer

    directory = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(7)
    CLIPModel(MPIQEModelTester().clip_config()).save_pretrained(directory)
    CLIPTokenizer(vocab=tiny_tokenizer_vocab(), merges=[]).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """A cache folder holding the embedded synthetic dataset, built once per test session."""
    from mpiqe_hf.data import load_iqa_dataset

    cache = tmp_path_factory.mktemp("mpiqe_cache")
    load_iqa_dataset("synthetic", cache_dir=cache)
    return str(cache)
