"""Training helpers shared by `examples/train.py` and `examples/evaluate.py`, one module a job:

- `samples`: the samples of a split ([`make_samples`], [`iqa_split`]) and the per-crop batches of an epoch
  ([`EpochShuffleSampler`], [`ShuffledCropBatches`]);
- `transforms`: labels ([`LabelEncoder`]), decoding and seeded crops ([`IQATransform`]), collation;
- `evaluation`: scoring a split ([`predict_per_image`], [`predict`], [`evaluate_model`]);
- `arguments`: [`DataArguments`];
- `splits`: the split protocols ([`plan_split`], [`SplitPlan`], [`load_split_sources`], [`label_coverage`]);
- `script`: how the example scripts end: one line and exit status 2 for bad input, 130 for Ctrl-C ([`run_script`]), and
  the output folder's check ([`check_output_folder`]).

A split is a small `datasets.Dataset` of samples, one row per `(row, visit)`: `row` indexes the IQA dataset (the
layout of `mpiqe_hf.data.load_iqa_dataset`, see `docs/data.md`) and `visit` numbers the times an epoch visits that
image. [`IQATransform`], set with `Dataset.with_transform`, decodes the images of a batch of samples and makes their
crops, so nothing is decoded before it is needed.

- Paper preset (per-crop training): every training image is visited `num_crops` times an epoch; each visit is one
  fresh random crop and its own sample (`pixel_values` `(1, 3, S, S)`), so batches count crops and the losses apply
  per crop, as in the paper's code base. [`ShuffledCropBatches`] decodes each image once an epoch
  (`IQATransform(visits=num_crops)` cuts all its visits' crops) and deals the crops into batches through a shuffle
  buffer, so a batch mixes crops of many images. [`make_samples`] with `visits=num_crops` lists the same samples one
  visit a row (one decode per crop), for inspection and for a plain `DataLoader`.
- Per-image training: `visits=1` and `crops_per_sample=num_crops`: one sample holds an image's `num_crops` random
  crops, whose scores the model averages before the loss.
- Evaluation: `visits=1`, grid crops; the model averages an image's crops.

The random crop (and optional flip) of a sample is drawn from a generator seeded with `(seed, epoch, row, visit)`,
not from the process-wide RNG: a sample's crop does not depend on the number of dataloader workers or processes, on
prefetching, or on where a run was interrupted, which is what makes `--resume_from_checkpoint` continue exactly.
Shuffling is Accelerate's seedable sampler (`DataLoaderConfiguration(use_seedable_sampler=True)`) or, for the
per-crop stream, [`EpochShuffleSampler`] and the buffer's generator, whose orders depend on `(seed, epoch)` (and the
process) only.
"""

from .arguments import SPLIT_PROTOCOLS, DataArguments, check_number
from .evaluation import evaluate_model, predict, predict_per_image
from .samples import EpochShuffleSampler, ShuffledCropBatches, iqa_split, make_samples
from .script import USAGE_ERROR, check_output_folder, run_script
from .splits import SplitPlan, label_coverage, load_source, load_split_sources, plan_split
from .transforms import IGNORE_INDEX, IQATransform, LabelEncoder, collate_iqa_batch, derived_seed, keep_samples


__all__ = [
    "DataArguments",
    "check_output_folder",
    "check_number",
    "SPLIT_PROTOCOLS",
    "SplitPlan",
    "plan_split",
    "load_split_sources",
    "load_source",
    "label_coverage",
    "IGNORE_INDEX",
    "LabelEncoder",
    "IQATransform",
    "make_samples",
    "iqa_split",
    "derived_seed",
    "collate_iqa_batch",
    "keep_samples",
    "EpochShuffleSampler",
    "ShuffledCropBatches",
    "predict_per_image",
    "predict",
    "evaluate_model",
    "run_script",
    "USAGE_ERROR",
]
