"""Scoring a split: one loop ([`predict_per_image`]) for MP-IQE and the baselines, and the metrics."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import compute_metrics


def predict_per_image(dataloader, device, accelerator, score_of) -> dict:
    """
    `score_of(pixel_values (batch, crops, 3, S, S)) -> (batch, ...)` over the batches of `dataloader` (of
    [`collate_iqa_batch`]), in the dict of [`predict`]: the loop that MP-IQE and the baselines share.
    """
    indices, scores, targets, skipped = [], [], [], []
    for batch in dataloader:
        skipped.extend(batch["skipped"])
        score = score_of(batch["pixel_values"].to(device))
        mos, index = batch["mos"].to(device), batch["index"].to(device)
        if accelerator is not None:
            score, mos, index = accelerator.gather_for_metrics((score, mos, index))
        indices.append(index.cpu())
        scores.append(score.cpu())
        targets.append(mos.cpu())
    if not indices:
        raise ValueError("The evaluation dataloader is empty.")
    return {
        "index": torch.cat(indices).numpy(),
        "score": torch.cat(scores).numpy().astype(np.float64),
        "mos": torch.cat(targets).numpy().astype(np.float64),
        "skipped": skipped,
    }


@torch.no_grad()
def predict(model, dataloader, accelerator=None) -> dict:
    """
    Scores every image of `dataloader` (batches of [`collate_iqa_batch`]).

    Returns a dict: `index` (rows of the dataset), `score` (predicted, normalised to [0, 1], higher = better) and
    `mos` (the normalised ground truth) as numpy arrays, and `skipped` (descriptions of the images that failed to
    decode). With an `accelerator` the results of all processes are gathered with `gather_for_metrics` (the samples
    that padding duplicated are dropped).
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    # The text side does not depend on the image: computed once for the whole evaluation.
    text_features = (accelerator.unwrap_model(model) if accelerator is not None else model).get_text_features()
    try:
        return predict_per_image(
            dataloader,
            device,
            accelerator,
            lambda pixel_values: model(pixel_values=pixel_values, text_features=text_features).score.float(),
        )
    finally:
        model.train(was_training)


def evaluate_model(model, dataloader, accelerator=None) -> dict:
    """
    SRCC, PLCC (raw and after the 4-parameter logistic), KRCC and RMSE of the model's scores against the normalised
    MOS of `dataloader` (RMSE is on the normalised [0, 1] scale), plus `num_samples`. See [`predict`].
    """
    predictions = predict(model, dataloader, accelerator)
    metrics = compute_metrics(predictions["score"], predictions["mos"])
    metrics["num_samples"] = int(len(predictions["score"]))
    return metrics
