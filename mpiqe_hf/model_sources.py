"""
Whether a model named on the command line can be had, found out in seconds: a local folder, the local Hugging Face
cache, or the Hub. Shared by the training script and `mpiqe-score`, so that neither waits through a download's
retries to say that the model is out of reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


#: The name under which `--clip_model_name_or_path` finds the stand-in CLIP shipped in this package.
STANDIN_CLIP_NAME = "mpiqe-standin-clip"
#: What every output made with the stand-in says about it.
STANDIN_CLIP_NOTICE = (
    "a stand-in, NOT CLIP: the small CLIP-shaped model shipped with mpiqe_hf (64-px crops, 4 vision layers, 64 wide, "
    "pretrained for minutes on distorted scikit-image photos and procedural pictures by "
    "benchmarks/make_standin_clip.py), so that training runs offline in minutes and learns something; its scores "
    "say nothing about MP-IQE on real CLIP"
)


def standin_clip_path() -> str:
    """The folder of the stand-in CLIP shipped with the package (a `CLIPModel` and its `CLIPTokenizer`)."""
    return str(Path(__file__).resolve().parent / "standin_clip")


def resolve_clip_source(name_or_path: str) -> str:
    """`name_or_path` itself, or the stand-in's folder for [`STANDIN_CLIP_NAME`]."""
    return standin_clip_path() if name_or_path == STANDIN_CLIP_NAME else name_or_path


def is_standin_clip(name_or_path) -> bool:
    """Whether `name_or_path` (a name, or a `base_model_name_or_path` read from a config) is the shipped stand-in."""
    if not name_or_path:
        return False
    return name_or_path == STANDIN_CLIP_NAME or Path(name_or_path).resolve() == Path(standin_clip_path())


class ModelSourceUnavailable(RuntimeError):
    """A model the run needs can be neither found locally nor downloaded; the message says what to do instead."""


def check_model_source(name_or_path: str, what: str, alternatives: Sequence[str] = (), revision=None):
    """
    Fails in seconds, with one message, when `name_or_path` (a Hub id) is neither a local folder, nor in the local
    Hugging Face cache, nor reachable on the Hub: before any output is written, instead of after the retries of a
    download. `what` names the model ("the CLIP model"); `alternatives` are extra suggestions.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceUnavailable(
                f"{what} folder {path} holds no config.json: pass the folder that `save_pretrained` (or "
                "`mpiqe_hf.save_adapter`) wrote, or a Hub repo id."
            )
        return
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ModelSourceUnavailable(f"{what} {name_or_path!r}: no such folder.") from None
    if isinstance(try_to_load_from_cache(name_or_path, "config.json", revision=revision), str):
        return
    if constants.HF_HUB_OFFLINE:
        reason = "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    else:
        try:
            HfApi().model_info(name_or_path, revision=revision, timeout=10)
            return
        except (RepositoryNotFoundError, GatedRepoError) as err:
            reason = f"the Hub refuses it ({type(err).__name__}: {str(err).splitlines()[0]})"
        except Exception as err:  # no network: httpx errors, timeouts, proxies
            detail = str(err).strip().splitlines()[0] if str(err).strip() else "no answer"
            reason = (
                f"it is not in the local Hugging Face cache and the Hub at {constants.ENDPOINT} cannot be reached "
                f"({type(err).__name__}: {detail})"
            )
    suggestions = [
        f"download it once where the Hub is reachable (`hf download {name_or_path}`) and run with HF_HUB_OFFLINE=1",
        "pass a local folder that holds it",
        *alternatives,
    ]
    raise ModelSourceUnavailable(
        f"Cannot load {what} {name_or_path!r}: {reason}. Instead: " + "; or ".join(suggestions) + "."
    )


__all__ = [
    "STANDIN_CLIP_NAME",
    "STANDIN_CLIP_NOTICE",
    "ModelSourceUnavailable",
    "check_model_source",
    "is_standin_clip",
    "resolve_clip_source",
    "standin_clip_path",
]
