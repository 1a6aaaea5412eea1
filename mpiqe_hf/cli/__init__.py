"""`mpiqe-score`: score images, lists of paths or `datasets` datasets with an MP-IQE model, from the command line.

    mpiqe-score photos/ extra.jpg "shots/**/*.png" --model org/mp-iqe-koniq --output scores.csv
    mpiqe-score --dataset data/*.parquet --image-column image --id-column id -m org/mp-iqe-koniq -o scores.parquet
    torchrun --nproc_per_node 4 -m mpiqe_hf.cli photos/ -m org/mp-iqe-koniq -o scores.jsonl

Images are decoded and cropped in DataLoader workers while the model scores full batches; rows are written and
flushed as they are scored; an image that cannot be decoded gets a row with status "error" and its reason. See
`mpiqe-score --help` and docs/usage.md.
"""

from .command import EXIT_STATUS_HELP, build_parser, main
from .inputs import collect_files
from .scoring import ScoreBatch, TorchScorer
from .writers import RESULT_COLUMNS


__all__ = ["main", "build_parser", "collect_files", "EXIT_STATUS_HELP", "RESULT_COLUMNS", "ScoreBatch", "TorchScorer"]
