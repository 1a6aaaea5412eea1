"""`python -m mpiqe_hf.cli`, `torchrun --nproc_per_node N -m mpiqe_hf.cli`, `accelerate launch -m mpiqe_hf.cli`."""

import sys

from . import main


sys.exit(main())
