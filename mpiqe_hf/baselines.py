"""The baselines that MP-IQE's results are read against, on the same images and crops as the model.

- [`predict_clip_iqa`]: zero-shot CLIP-IQA (Wang et al. 2023), "Good photo." vs "Bad photo." on a frozen CLIP.
- [`linear_probe`]: a ridge regression on the frozen CLIP image embedding, fitted on the training part of the
  split. It takes seconds where MP-IQE trains for hours, so training MP-IQE is worth it only where it beats the probe.

Both take the batches of `mpiqe_hf.training.collate_iqa_batch` (`pixel_values` `(batch, crops, 3, S, S)`, `mos`,
`index`, `skipped`) and return the dict of `mpiqe_hf.training.predict`: `index`, `score`, `mos` (numpy) and `skipped`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .training import predict_per_image


CLIP_IQA_PROMPTS = ("Good photo.", "Bad photo.")
# Ridge strengths tried by cross-validation, on standardised features (0.1 to 10,000).
PROBE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 4, 11))


def _device(clip, accelerator):
    return accelerator.device if accelerator is not None else next(clip.parameters()).device


@torch.no_grad()
def predict_clip_iqa(clip, tokenizer, dataloader, accelerator=None) -> dict:
    """
    The zero-shot CLIP-IQA baseline (Wang et al. 2023) on the crops of `dataloader`: each crop's softmax over its
    cosine similarities (times CLIP's logit scale) with the antonym prompts "Good photo." and "Bad photo."; an image's
    score is P(good) averaged over its crops. `clip` is a `CLIPModel` (MP-IQE's frozen `model.clip`, so the baseline
    uses the same CLIP). Returns the dict of `mpiqe_hf.training.predict`; `score` is `(num_images,)` in [0, 1].
    """
    device = _device(clip, accelerator)
    encoded = tokenizer(list(CLIP_IQA_PROMPTS), padding=True, return_tensors="pt").to(device)
    text = F.normalize(clip.get_text_features(**encoded).pooler_output.float(), dim=-1)

    def p_good(pixel_values):
        batch_size, num_crops = pixel_values.shape[:2]
        image = clip.get_image_features(pixel_values=pixel_values.flatten(0, 1)).pooler_output.float()
        logits = clip.logit_scale.exp() * F.normalize(image, dim=-1) @ text.T
        return logits.softmax(dim=-1)[:, 0].view(batch_size, num_crops).mean(dim=1)

    return predict_per_image(dataloader, device, accelerator, p_good)


@torch.no_grad()
def clip_image_embeddings(clip, dataloader, accelerator=None) -> dict:
    """
    The frozen CLIP image embedding of every image of `dataloader`: each crop's projected embedding, L2-normalised,
    averaged over the image's crops. Returns the dict of `mpiqe_hf.training.predict` with `embedding`
    `(num_images, projection_dim)` (float64) in place of `score`.
    """

    def embed(pixel_values):
        batch_size, num_crops = pixel_values.shape[:2]
        image = clip.get_image_features(pixel_values=pixel_values.flatten(0, 1)).pooler_output.float()
        return F.normalize(image, dim=-1).view(batch_size, num_crops, -1).mean(dim=1)

    result = predict_per_image(dataloader, _device(clip, accelerator), accelerator, embed)
    result["embedding"] = result.pop("score")
    return result


class RidgeProbe:
    """
    Ridge regression with the ridge strength chosen by K-fold cross-validation on the data it is fitted on.

    Features are standardised with the fitted data's mean and standard deviation and the intercept is not penalised.
    Each strength of `alphas` is scored by the mean squared error of its out-of-fold predictions; with `groups`
    (e.g. the reference content of each image) the folds keep a group together, as a content-disjoint split does.
    Closed form through one SVD per fold (numpy only).

    Args:
        alphas (`Sequence[float]`): ridge strengths to choose from (one: no cross-validation).
        num_folds (`int`): folds of the cross-validation (fewer when there are fewer samples or groups).
        seed (`int`): seed of the fold assignment.

    After `fit`: `alpha_` (the chosen strength), `cv_mse_` (`{alpha: out-of-fold MSE}`), `coef_` `(num_features,)`
    and `intercept_` on the standardised features, `mean_` and `scale_` `(num_features,)`.
    """

    def __init__(self, alphas: Sequence[float] = PROBE_ALPHAS, num_folds: int = 5, seed: int = 0):
        if not alphas or any(a <= 0 for a in alphas):
            raise ValueError(f"alphas must be positive ridge strengths, got {list(alphas)}.")
        if num_folds < 2:
            raise ValueError(f"num_folds must be at least 2, got {num_folds}.")
        self.alphas = [float(a) for a in alphas]
        self.num_folds = num_folds
        self.seed = seed

    @staticmethod
    def _solve(features, targets, alphas):
        """`(mean, scale, intercept, [coef per alpha])` of ridge fits of `targets` on standardised `features`."""
        mean = features.mean(0)
        scale = features.std(0)
        scale[scale == 0] = 1.0
        standardised = (features - mean) / scale
        intercept = targets.mean()
        u, s, vt = np.linalg.svd(standardised, full_matrices=False)
        projected = u.T @ (targets - intercept)
        return mean, scale, intercept, [vt.T @ (s / (s**2 + alpha) * projected) for alpha in alphas]

    def _folds(self, n, groups):
        rng = np.random.default_rng(self.seed)
        if groups is None:
            fold_of = rng.permutation(n) % min(self.num_folds, n)
            return [np.flatnonzero(fold_of == k) for k in range(fold_of.max() + 1)]
        names, group_index = np.unique(np.asarray(groups), return_inverse=True)
        group_fold = rng.permutation(len(names)) % min(self.num_folds, len(names))
        fold_of = group_fold[group_index]
        return [np.flatnonzero(fold_of == k) for k in range(group_fold.max() + 1)]

    def fit(self, features, targets, groups: Sequence | None = None) -> RidgeProbe:
        """Fits on `features` `(n, num_features)` and `targets` `(n,)`; `groups` `(n,)` keeps groups in one fold."""
        features = np.asarray(features, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        if features.ndim != 2 or targets.shape != (features.shape[0],):
            raise ValueError(
                f"features must be (n, num_features) and targets (n,), got {features.shape} and {targets.shape}."
            )
        if groups is not None and len(groups) != len(targets):
            raise ValueError(f"groups must have one entry per sample ({len(targets)}), got {len(groups)}.")
        self.cv_mse_ = {}
        if len(self.alphas) > 1:
            folds = self._folds(len(targets), groups)
            if len(folds) < 2:
                raise ValueError(
                    "The linear probe's cross-validation needs at least 2 training images "
                    "(2 contents for a content-disjoint split)."
                )
            errors = np.zeros(len(self.alphas))
            for held in folds:
                kept = np.setdiff1d(np.arange(len(targets)), held)
                mean, scale, intercept, coefs = self._solve(features[kept], targets[kept], self.alphas)
                standardised = (features[held] - mean) / scale
                for position, coef in enumerate(coefs):
                    errors[position] += np.sum((standardised @ coef + intercept - targets[held]) ** 2)
            mse = errors / len(targets)
            self.cv_mse_ = {alpha: float(value) for alpha, value in zip(self.alphas, mse, strict=True)}
            self.alpha_ = min(self.cv_mse_, key=self.cv_mse_.get)
        else:
            self.alpha_ = self.alphas[0]
        self.mean_, self.scale_, self.intercept_, (self.coef_,) = self._solve(features, targets, [self.alpha_])
        return self

    def predict(self, features) -> np.ndarray:
        """Predicted targets `(n,)` of `features` `(n, num_features)`."""
        if not hasattr(self, "coef_"):
            raise ValueError("Call fit before predict.")
        features = np.asarray(features, dtype=np.float64)
        return (features - self.mean_) / self.scale_ @ self.coef_ + self.intercept_


def linear_probe(
    clip, train_dataloader, eval_dataloader, accelerator=None, content_ids: Sequence | None = None, **probe_options
) -> dict:
    """
    The linear-probe baseline: a [`RidgeProbe`] of the normalised MOS on the frozen CLIP image embedding
    ([`clip_image_embeddings`]) of the images of `train_dataloader` (the training part of the split), its strength
    chosen by cross-validation there, scoring the images of `eval_dataloader`. `content_ids`, indexed by dataset row,
    groups the cross-validation folds by content (pass it when the split is content-disjoint).

    Returns the dict of `mpiqe_hf.training.predict` for the images of `eval_dataloader` (`score` `(num_images,)` on
    the normalised MOS scale), plus `alpha` (the chosen strength) and `num_train_images`.
    """
    train = clip_image_embeddings(clip, train_dataloader, accelerator)
    groups = None if content_ids is None else [content_ids[int(row)] for row in train["index"]]
    probe = RidgeProbe(**probe_options).fit(train["embedding"], train["mos"], groups=groups)
    result = clip_image_embeddings(clip, eval_dataloader, accelerator)
    result["score"] = probe.predict(result.pop("embedding"))
    result.update(alpha=probe.alpha_, num_train_images=len(train["mos"]))
    return result


__all__ = [
    "CLIP_IQA_PROMPTS",
    "PROBE_ALPHAS",
    "predict_clip_iqa",
    "clip_image_embeddings",
    "RidgeProbe",
    "linear_probe",
]
