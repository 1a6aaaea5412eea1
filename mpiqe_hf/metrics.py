"""IQA evaluation metrics: SRCC, PLCC (raw and after the 4-parameter logistic mapping), KRCC and RMSE."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats


MIN_ITEMS = 3


def _check(predictions, targets):
    try:
        x = np.asarray(predictions, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"predictions and targets must be numeric: {err}") from None
    if x.ndim > 1:
        if sum(d > 1 for d in x.shape) > 1:
            raise ValueError(f"predictions must be one-dimensional, got shape {x.shape}.")
        x = x.reshape(-1)
    if y.ndim > 1:
        if sum(d > 1 for d in y.shape) > 1:
            raise ValueError(f"targets must be one-dimensional, got shape {y.shape}.")
        y = y.reshape(-1)
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"Length mismatch: {x.shape[0]} predictions for {y.shape[0]} targets.")
    if x.shape[0] < MIN_ITEMS:
        raise ValueError(f"Need at least {MIN_ITEMS} items to compute a correlation, got {x.shape[0]}.")
    for name, v in (("predictions", x), ("targets", y)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contain NaN or infinite values.")
        if np.all(v == v[0]):
            raise ValueError(f"{name} are constant; correlations are undefined.")
    return x, y


def logistic_4(x, beta1, beta2, beta3, beta4):
    """VQEG 4-parameter logistic: `(beta1 - beta2) / (1 + exp(-(x - beta3) / |beta4|)) + beta2`."""
    z = np.clip(-(x - beta3) / (np.abs(beta4) + 1e-12), -500.0, 500.0)
    return (beta1 - beta2) / (1.0 + np.exp(z)) + beta2


def _logistic_jacobian(x, beta1, beta2, beta3, beta4):
    scale = np.abs(beta4) + 1e-12
    z = np.clip(-(x - beta3) / scale, -500.0, 500.0)
    s = 1.0 / (1.0 + np.exp(z))
    ds = (beta1 - beta2) * s * (1.0 - s)
    return np.stack([s, 1.0 - s, -ds / scale, -ds * (x - beta3) / scale**2 * np.sign(beta4 or 1.0)], axis=1)


def fit_logistic(predictions, targets):
    """Least-squares fit of [`logistic_4`] mapping predictions to targets; returns the 4 parameters."""
    x, y = _check(predictions, targets)
    spread = np.std(x)
    p0 = [np.max(y), np.min(y), np.mean(x), spread / 4.0 if spread > 0 else 1.0]
    if stats.pearsonr(x, y)[0] < 0:
        p0[0], p0[1] = p0[1], p0[0]
    # The covariance that curve_fit also computes, and that is not used here, overflows for near-flat fits.
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        params, _ = optimize.curve_fit(logistic_4, x, y, p0=p0, jac=_logistic_jacobian, maxfev=20000)
    return params


def srcc(predictions, targets) -> float:
    """Spearman rank-order correlation."""
    x, y = _check(predictions, targets)
    return float(stats.spearmanr(x, y)[0])


def krcc(predictions, targets) -> float:
    """Kendall rank-order correlation (tau-b)."""
    x, y = _check(predictions, targets)
    return float(stats.kendalltau(x, y)[0])


def plcc(predictions, targets, logistic: bool = False) -> float:
    """Pearson linear correlation; with `logistic=True`, between the logistic-mapped predictions and the targets.

    If the logistic fit does not converge the raw PLCC is returned with a `RuntimeWarning`.
    """
    x, y = _check(predictions, targets)
    if logistic:
        try:
            mapped = logistic_4(x, *fit_logistic(x, y))
        except (RuntimeError, ValueError, TypeError) as err:  # TypeError: fewer points than the 4 parameters
            warnings.warn(f"Logistic fit failed ({err}); reporting the raw PLCC.", RuntimeWarning, stacklevel=2)
            mapped = x
        if not np.all(np.isfinite(mapped)) or np.all(mapped == mapped[0]):
            warnings.warn(
                "Logistic fit is constant or not finite; reporting the raw PLCC.", RuntimeWarning, stacklevel=2
            )
            mapped = x
        x = mapped
    return float(stats.pearsonr(x, y)[0])


def rmse(predictions, targets) -> float:
    """Root mean squared error between predictions and targets (on the scale they are given in, no mapping)."""
    x, y = _check(predictions, targets)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def compute_metrics(predictions, targets) -> dict:
    """`{"srcc", "plcc", "plcc_logistic", "krcc", "rmse"}` for 1-D predictions and targets."""
    x, y = _check(predictions, targets)
    return {
        "srcc": srcc(x, y),
        "plcc": plcc(x, y),
        "plcc_logistic": plcc(x, y, logistic=True),
        "krcc": krcc(x, y),
        "rmse": rmse(x, y),
    }


__all__ = ["srcc", "plcc", "krcc", "rmse", "compute_metrics", "logistic_4", "fit_logistic"]
