"""
Whether a model named on the command line can be had, found out in seconds: a local folder, the local Hugging Face
cache, or the Hub. Shared by the training script and `mpiqe-score`, so that neither waits through a download's
retries to say that the model is out of reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


class ModelSourceUnavailable(RuntimeError):
    """A model the run needs can be neither found locally nor downloaded; the message says what to do instead."""


def check_model_source(name_or_path: str, what: str, alternatives: Sequence[str] = (), revision=None):
    """
    Fails in seconds, with one message, when `name_or_path` (a Hub id) is neither a local folder, nor in the local
    Hugging Face cache, nor reachable on the Hub: before any output is written, instead of after the retries of a
    download. `what` names the model ("the CLIP model"); `alternatives` are extra suggestions.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelSourceUnavailable(f"{what} folder {path} holds no config.json.")
        return
    if path.suffix or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelSourceUnavailable(f"{what} {name_or_path!r}: no such folder.")
    for filename in ("config.json", "adapter_config.json"):
        if isinstance(try_to_load_from_cache(name_or_path, filename, revision=revision), str):
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
            reason = f"it is not in the local Hugging Face cache and the Hub cannot be reached ({type(err).__name__})"
    suggestions = [
        f"download it once where the Hub is reachable (`hf download {name_or_path}`) and run with HF_HUB_OFFLINE=1",
        "pass a local folder that holds it",
        *alternatives,
    ]
    raise ModelSourceUnavailable(f"Cannot load {what} {name_or_path!r}: {reason}. Instead: " + "; or ".join(suggestions)
                                 + ".")


__all__ = ["ModelSourceUnavailable", "check_model_source"]
