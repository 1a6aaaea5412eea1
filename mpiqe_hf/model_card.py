"""The Hub model card of MP-IQE checkpoints, built with huggingface_hub's `ModelCard`, filled by `push_to_hub`.

`MODEL_CARD.md` at the root of the project is this card rendered for the paper's KonIQ-10k setting
(`python -m mpiqe_hf.model_card > MODEL_CARD.md`); a test keeps the two in step.
"""

import os
import string
import sys

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .model_sources import STANDIN_CLIP_NOTICE, is_standin_clip


__all__ = ["build_model_card", "example_card", "DEFAULT_BASE_MODEL"]

DEFAULT_BASE_MODEL = "openai/clip-vit-base-patch16"
#: The model-index metrics of each evaluation result: (key, metric type, display name).
_METRICS = (
    ("srcc", "spearmanr", "SRCC"),
    ("plcc", "pearsonr", "PLCC"),
    ("krcc", "kendalltau", "KRCC"),
    ("rmse", "rmse", "RMSE"),
)

#: Example images of the Hub widget (the `image-classification` task).
_WIDGET = [
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/tiger.jpg", "example_title": "Tiger"},
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/teapot.jpg", "example_title": "Teapot"},
]

_BODY = string.Template(
    """
# $title

MP-IQE (multi-modal prompt learning for blind image quality assessment) predicts how good a photo looks, without a
reference image. It keeps a CLIP model ($base_model) frozen and learns text prompts for 9 scene classes and 11
distortion families, visual prompt tokens in $prompt_layers vision layers, and a small multimodal encoder that turns
the image tokens, queried by the prompt features, into one quality score per crop.

$summary

## Intended use

- Ranking and filtering photos by perceived quality, monitoring capture or compression pipelines, as a quality
  signal in dataset curation.
- Scores are relative to the training dataset's opinion scale ($scale). Compare scores of one checkpoint with each
  other; do not compare them across checkpoints trained on different datasets.
- Not for decisions about people, and not a replacement for a subjective test when the stakes are high.

## How to load and score

With the package (`pip install mpiqe_hf`):

```python
from transformers import pipeline
import mpiqe_hf  # registers the "image-quality-assessment" task

scorer = pipeline("image-quality-assessment", model="$repo_id")
scorer("photo.jpg")
# {'score': ..., 'quality': 'good', 'scene': 'landscape', 'distortion': 'blur'}
scorer(["a.jpg", "b.png"], batch_size=8, top_k=3)  # adds scene/distortion/quality probabilities
```

Without it, from the remote code stored in this repository:

```python
from transformers import AutoImageProcessor, AutoModel, pipeline

model = AutoModel.from_pretrained("$repo_id", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("$repo_id", trust_remote_code=True)
pixel_values = processor("photo.jpg", return_tensors="pt")["pixel_values"]  # (1, crops, 3, H, W)
text_features = model.get_text_features()  # image independent: compute once, reuse for every batch
score = model.to_native_scale(model(pixel_values, text_features=text_features).score)

scorer = pipeline(model="$repo_id", trust_remote_code=True)  # image-classification form
scorer("photo.jpg")  # [{'label': 'good', 'score': ...}, ...] over the five quality levels
```

From the command line: `mpiqe-score photos/ --model $repo_id --format csv --output scores.csv`.

The Hub widget uses the `image-classification` task: the configuration announces the remote-code pipeline for that
task, which answers with the five quality levels ($levels) as labels. The level is the fifth of the normalised
score's range that holds the score; the label weights are a soft view of the score (a normal distribution of half
a level's width around it), not calibrated probabilities.

## Model details

| | |
|---|---|
| Base model | $base_model (frozen) |
| Checkpoint format | $checkpoint_format |
| Text prompts | $text_prompt_length learned context vectors per family; $num_scenes scenes, $num_distortions distortions |
| Visual prompts | $visual_prompt_length tokens in each of $prompt_layers layers |
| Multimodal encoder | $decoder_layers pre-LN decoder layers, $decoder_heads heads |
| Input | $num_crops crops of $crop_size x $crop_size per image ($crop_mode), averaged; smaller images are resized up |
| Output | score on $scale ($direction), quality level, scene and dominant distortion |

## Training recipe

Following the MP-IQE paper: Adam, learning rate 3e-5, 5 warm-up epochs then cosine decay, 30 epochs, 8 random
224 x 224 crops per image, each crop its own sample, batch size 64 crops (32 for LIVE, CSIQ and BID). The loss is
L = L_scene + $distortion_loss_weight * L_distortion + $score_loss_weight * SmoothL1($score_loss_scale * score, $score_loss_scale * MOS),
with the MOS normalised to [0, 1]; the scene and distortion labels are LIQE's. Only the prompts, the image-token projection, the
multimodal encoder and the score head are trained: CLIP stays frozen.$run_recipe

## Evaluation protocol

Each dataset is split 80% / 20% into training and test images, 10 times with different seeds (by reference image
for the synthetic datasets LIVE, CSIQ and KADID, so that no content is shared); the reported numbers are the
medians of the Spearman (SRCC) and Pearson (PLCC) correlations over the 10 test sets.

$results_table

## Limitations

- Trained on one dataset's kind of images and distortions: quality judgements transfer imperfectly to other
  content (cross-dataset SRCC in the paper is 0.78-0.94), and the score scale is that dataset's.
- Scene and distortion outputs come from 9 and 11 fixed classes; an image's real distortion may be none of them.
- Crops see the image at native resolution; very large images are only partly covered by the crops, and images
  smaller than a crop are enlarged, which itself changes their quality.
- CLIP's biases carry over; the model has not been audited for fairness across people or places.

## Citation

The MP-IQE paper (multi-modal prompt learning for blind image quality assessment), and LIQE (Zhang et al. 2023)
for the scene and distortion vocabularies.
"""
)


def _base_model(config) -> str:
    """The Hub repo the CLIP came from; the paper's CLIP when the model names none or a local folder."""
    name = str(config.base_model_name_or_path or "")
    if "/" not in name or os.path.exists(name):
        return DEFAULT_BASE_MODEL
    try:
        validate_repo_id(name)
    except HFValidationError:
        return DEFAULT_BASE_MODEL
    return name


def _eval_results(evaluation_results) -> list[EvalResult]:
    results = []
    for item in evaluation_results or []:
        if "dataset" not in item or "srcc" not in item or "plcc" not in item:
            raise ValueError(f"Each evaluation result needs 'dataset', 'srcc' and 'plcc', got {item!r}.")
        for key, metric_type, metric_name in _METRICS:
            if item.get(key) is None:
                continue
            results.append(
                EvalResult(
                    task_type="image-quality-assessment",
                    task_name="Image quality assessment",
                    dataset_type=item.get("dataset_id") or item["dataset"],
                    dataset_name=item["dataset"],
                    dataset_split=item.get("split"),
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(item[key]), 4),
                    # the Hub's model-index takes a source only with its URL; the card's table names it anyway
                    **(
                        {"source_name": item["source"], "source_url": item["source_url"]}
                        if item.get("source") and item.get("source_url")
                        else {}
                    ),
                )
            )
    return results


def _results_table(evaluation_results) -> str:
    if not evaluation_results:
        return "No evaluation results were recorded for this checkpoint."
    rows = "\n".join(
        f"| {item['dataset']} | {item.get('split') or 'test'} | {float(item['srcc']):.4f} | {float(item['plcc']):.4f} |"
        for item in evaluation_results
    )
    sources = sorted({item["source"] for item in evaluation_results if item.get("source")})
    note = f"\n\nSource: {'; '.join(sources)}." if sources else "\n\nMeasured on this checkpoint."
    return f"| Dataset | Split | SRCC | PLCC |\n|---|---|---|---|\n{rows}{note}"


#: The paper's recipe in `training_args.json`'s keys, with how the card names each.
_PAPER_RECIPE = {
    "learning_rate": (3e-5, "learning rate"),
    "num_train_epochs": (30, "epochs"),
    "crop_sampling": ("per_crop", "samples (per-image instead of per-crop)"),
}


def _run_recipe(training_recipe) -> str:
    """The paragraph on how this checkpoint was trained, naming where the run left the paper's recipe."""
    if not training_recipe:
        return ""
    recipe = {**{key: value for key, (value, _) in _PAPER_RECIPE.items()}, **training_recipe}
    unit = "crops" if recipe["crop_sampling"] == "per_crop" else "images"
    text = (
        f"\n\nThis checkpoint's run: Adam, learning rate {recipe['learning_rate']:g}, "
        f"{recipe['num_train_epochs']} epoch(s)"
    )
    if "max_train_steps" in recipe:
        text += f" = {recipe['max_train_steps']} optimizer steps"
    if "total_train_batch_size" in recipe:
        text += f" of {recipe['total_train_batch_size']} {unit}"
    text += f", {recipe['crop_sampling'].replace('_', '-')} samples"
    departures = [label for key, (value, label) in _PAPER_RECIPE.items() if recipe[key] != value]
    if departures:
        text += f"; it departs from the paper's recipe in: {', '.join(departures)}"
    return text + "."


def _card_data(name, evaluation_results, tags, base_model, license) -> ModelCardData:
    """The card's metadata: library, task, tags, base model, datasets, metrics and the `model-index`."""
    all_tags = ["image-quality-assessment", "iqa", "blind-iqa", "clip", "prompt-learning", "mp-iqe"]
    all_tags += [tag for tag in tags or [] if tag not in all_tags]
    eval_results = _eval_results(evaluation_results)
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=all_tags,
        base_model=base_model,
        datasets=sorted({item.get("dataset_id") or item["dataset"] for item in evaluation_results}) or None,
        metrics=["spearmanr", "pearsonr"],
        model_name=name,
        eval_results=eval_results or None,
        widget=_WIDGET,
    )


def _summary(config, span, standin, adapter_only) -> str:
    """The card's first words on this checkpoint: its scale (and direction), its backbone, its form."""
    summary = f"This checkpoint scores on {span}, " + (
        "higher is better." if config.mos_higher_is_better else "lower is better (a DMOS scale)."
    )
    if standin:
        summary = f"**Its frozen backbone is {STANDIN_CLIP_NOTICE}.** " + summary
    if adapter_only:
        summary += (
            " The repository holds only the trained weights (`mpiqe_adapter.safetensors`); loading it fetches "
            f"{config.base_model_name_or_path} at revision {config.base_model_revision or 'main'}, the CLIP its "
            "`config.json` names."
        )
    return summary


def build_model_card(
    config,
    repo_id: str = "org/mp-iqe",
    evaluation_results: list[dict] | None = None,
    tags: list[str] | None = None,
    adapter_only: bool = False,
    image_processor=None,
    license: str = "mit",
    training_recipe: dict | None = None,
) -> ModelCard:
    """
    The model card (`README.md`) of an MP-IQE checkpoint: `ModelCardData` metadata (`library_name`, `license`,
    `tags`, `base_model`, `datasets`, `metrics`, and a `model-index` of `EvalResult`s with SRCC/PLCC per dataset)
    above the description of the model, its use, recipe, protocol and limitations.

    Args:
        config ([`MPIQEConfig`]): the model's config (scale, prompts, base model).
        repo_id (`str`): the repo the card is written for.
        evaluation_results (`list[dict]`, *optional*): `{"dataset", "srcc", "plcc"}` (+ optional `dataset_id`,
            `split`, `krcc`, `rmse`, `source`, `source_url`).
        tags (`list[str]`, *optional*): extra tags.
        adapter_only (`bool`): whether the repo holds the adapter form.
        image_processor (*optional*): the processor uploaded with the model, for the input description.
        training_recipe (`dict`, *optional*): how this checkpoint was trained, in `training_args.json`'s keys
            (`learning_rate`, `num_train_epochs`, `max_train_steps`, `total_train_batch_size`, `crop_sampling`):
            stated under the paper's recipe, with where it departs from it.
    """
    evaluation_results = [dict(item) for item in evaluation_results or []]
    standin = is_standin_clip(config.base_model_name_or_path)
    base_model = None if standin else _base_model(config)
    name = repo_id.split("/")[-1]
    card_data = _card_data(name, evaluation_results, tags, base_model, license)
    span = f"[{config.mos_min:g}, {config.mos_max:g}]"
    summary = _summary(config, span, standin, adapter_only)
    processor = image_processor
    crop_size = getattr(processor, "crop_size", None) or {"height": config.clip_config.vision_config.image_size}
    crop_side = crop_size if isinstance(crop_size, int) else crop_size["height"]
    body = _BODY.substitute(
        title=f"MP-IQE: {name}",
        base_model="the stand-in CLIP shipped with mpiqe_hf (not CLIP)" if standin else f"`{base_model}`",
        prompt_layers=config.visual_prompt_depth,
        summary=summary,
        scale=span,
        direction="higher is better" if config.mos_higher_is_better else "lower is better",
        repo_id=repo_id,
        levels=", ".join(config.quality_levels),
        checkpoint_format="adapter (base CLIP fetched at load time)" if adapter_only else "full (safetensors)",
        text_prompt_length=config.text_prompt_length,
        num_scenes=len(config.scene_classes),
        num_distortions=len(config.distortion_classes),
        visual_prompt_length=config.visual_prompt_length,
        decoder_layers=config.decoder_layers,
        decoder_heads=config.decoder_heads,
        num_crops=getattr(processor, "num_crops", 8),
        crop_size=crop_side,
        crop_mode=f"{getattr(processor, 'crop_mode', 'grid')} crops",
        distortion_loss_weight=config.distortion_loss_weight,
        score_loss_weight=config.score_loss_weight,
        score_loss_scale=f"{config.score_loss_scale:g}",
        results_table=_results_table(evaluation_results),
        run_recipe=_run_recipe(training_recipe),
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def example_card() -> str:
    """`MODEL_CARD.md`: the card rendered for the paper's KonIQ-10k setting, with the paper's reported numbers."""
    from .configuration_mpiqe import MPIQEConfig

    config = MPIQEConfig(mos_min=1.0, mos_max=5.0, base_model_name_or_path=DEFAULT_BASE_MODEL)
    results = [
        {
            "dataset": "KonIQ-10k",
            "dataset_id": "koniq-10k",
            "split": "test",
            "srcc": 0.898,
            "plcc": 0.904,
            "source": "MP-IQE paper, Table 1 (figures reported there, not measured on a checkpoint of this library; push_to_hub replaces them with the checkpoint's own results)",
        }
    ]
    return str(build_model_card(config, repo_id="org/mp-iqe-koniq", evaluation_results=results))


if __name__ == "__main__":
    sys.stdout.write(example_card())
