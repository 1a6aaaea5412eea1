"""How `examples/train.py`, `examples/evaluate.py` and `examples/run_protocol.py` end: bad input is one line on stderr
and exit status 2, Ctrl-C one line and 130, a bug its traceback and a request to report it (exit status 70, as
for `mpiqe-score`)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from ..cli.errors import UsageError
from ..model_sources import ModelSourceUnavailable


USAGE_ERROR = 2
INTERRUPTED = 130
BUG = 70  # EX_SOFTWARE of sysexits.h, as `mpiqe-score` (where 1 means that some images failed)
# What bad input raises: the loaders and checks name the file, line, field or option and the way out in the message.
INPUT_ERRORS = (UsageError, ModelSourceUnavailable, ValueError)


def check_output_folder(path, option: str = "--output_dir"):
    """
    Raises `ValueError` naming `option` when `path` cannot be the output folder: a file, or a symbolic link whose
    target does not exist or that loops (`os.makedirs` would fail with "File exists" only after the run has loaded
    everything). A folder, or a path that does not exist yet, passes.
    """
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(
            f"{option} {path} is a symbolic link to {os.readlink(path)}, which does not exist or loops back: remove "
            "the link or pass another folder."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path} is a file, not a folder: pass a new or empty folder.")


def run_script(main: Callable, argv=None, *, prog: str, interrupted: str = "interrupted") -> int:
    """
    Runs `main(argv)` and returns the exit status: 0 when it returns, 2 with `prog: error: <message>` for bad input
    (`INPUT_ERRORS`), 130 with `prog: <interrupted>` for Ctrl-C, 70 with the traceback and a request to report it for
    anything else. Argument-parsing errors keep argparse's own message and exit status 2 (`SystemExit`).
    """
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return INTERRUPTED
    except INPUT_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except Exception:
        traceback.print_exc()
        print(
            f"{prog}: this is a bug in mpiqe_hf, not a problem with your input: please report it to the mpiqe_hf "
            "maintainers with the traceback above and the command line",
            file=sys.stderr,
        )
        return BUG
    return 0
