"""Shared fixtures: small random CLIPs shaped like the Hub's openai CLIP (see `mpiqe_hf.testing_utils` for how they
differ from the real artefact) and CLIP's real BPE tokenizer."""

import textwrap

import pytest
import torch

from mpiqe_hf import MPIQEConfig, MPIQEModel
from mpiqe_hf.testing_utils import clip_tokenizer, hub_clip_config, save_tiny_clip  # noqa: F401 (re-exported)


# Tests that run model files in a child process without the package start the child's script with this: it drops
# the editable-install finder of `mpiqe_hf` (and any sys.path entry holding the package), then proves that the
# package cannot be imported.
HIDE_PACKAGE = textwrap.dedent(
    """
    import importlib.util, os, sys
    sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in repr(h)]
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or os.getcwd(), "mpiqe_hf"))]
    sys.path_importer_cache.clear()
    try:
        import mpiqe_hf
    except ImportError:
        print("MPIQE_HF_HIDDEN")
    else:
        raise SystemExit("mpiqe_hf is importable in the child: " + mpiqe_hf.__file__)
    """
)


class MPIQEModelTester:
    """Builds tiny MP-IQE configs and inputs on the Hub-shaped CLIP of `hub_clip_config`: towers 32 wide, the 512-wide
    image-text space, image 30, patch 2 (a 15 x 15 patch grid)."""

    def __init__(self, vision_layers=2, text_layers=2, image_size=30, patch_size=2, batch_size=2, num_crops=3):
        self.vision_layers = vision_layers
        self.text_layers = text_layers
        self.image_size = image_size
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.num_crops = num_crops

    def clip_config(self):
        return hub_clip_config(self.vision_layers, self.text_layers, self.image_size, self.patch_size)

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
        prompt moves the score by far more than float rounding: prompts and biases get a standard deviation of 0.3,
        matrices 0.3 at a fan-in of 32 and less at larger ones, so that the 512-wide decoder stays at scores of order
        one."""
        torch.manual_seed(seed)
        model = MPIQEModel(self.config(**overrides)).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and not name.endswith("norm.weight"):
                    fan_in = param.shape[1] if param.dim() == 2 and "prompt" not in name else 32
                    param.normal_(std=0.3 * (32 / fan_in) ** 0.5)
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
    """A local folder with a small random Hub-shaped CLIPModel and CLIP's tokenizer, usable as
    `clip_model_name_or_path`."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=7)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """A cache folder holding the embedded synthetic dataset, built once per test session."""
    from mpiqe_hf.data import load_iqa_dataset

    cache = tmp_path_factory.mktemp("mpiqe_cache")
    load_iqa_dataset("synthetic", cache_dir=cache)
    return str(cache)
