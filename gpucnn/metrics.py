"""Metrics of a binary classifier, on host (NumPy) arrays: accuracy at a threshold, binary
cross-entropy, and the area under the ROC curve.

``scores`` are the model's outputs for the positive class, (N,) or (N, 1): probabilities
(``model.predict_proba``) or, with ``from_logits=True``, the logits (``model.predict``).
ROC AUC depends only on how the scores rank the samples, and the logits rank them without
the ties that a float32 sigmoid makes when it rounds large logits to exactly 1.0; prefer them.
``labels`` are 0/1 (integers, booleans, or floats equal to 0.0 or 1.0), one per score.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["binary_accuracy", "binary_cross_entropy", "binary_metrics", "roc_auc", "roc_auc_or_nan"]

# The smallest distance from 0 and 1 at which probabilities are read, as in Keras
# (keras.backend.epsilon()), so that a confident wrong answer costs about 16, not infinity.
PROBABILITY_EPSILON = 1e-7


def _binary(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` (N,) and ``labels`` (N,) bool, checked: same length, no NaN score, 0/1 labels."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1:
        raise ValueError(f"scores must be (N,) or (N, 1), one per sample, got shape {scores.shape}")
    if scores.dtype.kind not in "fiub":
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    if labels.size != scores.size:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if scores.size == 0:
        raise ValueError("no samples: scores and labels are empty")
    labels = labels.reshape(-1)
    if labels.dtype.kind not in "fiub":
        raise TypeError(f"labels must be 0/1 numbers, got {labels.dtype}")
    not_binary = np.flatnonzero((labels != 0) & (labels != 1))
    if not_binary.size:
        index = int(not_binary[0])
        raise ValueError(f"labels must be 0 or 1, got {labels[index]} at index {index}")
    if scores.dtype.kind == "f":
        nan = np.flatnonzero(np.isnan(scores))
        if nan.size:
            raise ValueError(f"score {int(nan[0])} is NaN ({nan.size} NaN scores in all)")
    return scores, labels == 1


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve, exactly: the probability that a random positive scores above
    a random negative, a tie counting one half.

    Computed as the Mann-Whitney U statistic with midranks: sort the scores, give each group
    of equal scores the mean of the ranks it spans, sum the ranks R of the P positives, then
    ``AUC = (R - P(P+1)/2) / (P*Q)`` for Q negatives. Ranks are doubled to stay integers, so
    the result is the exact fraction, rounded once to a float. O(N log N).

    Raises ValueError when a class is absent (the area is then undefined).
    """
    scores, positive = _binary(scores, labels)
    n = scores.size
    n_pos = int(positive.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs both classes, got {n_pos} positive and {n_neg} negative labels")
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    # Tie groups: group g spans sorted positions starts[g] .. ends[g]-1, that is ranks
    # starts[g]+1 .. ends[g], whose mean doubled is starts[g] + 1 + ends[g].
    starts = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    ends = np.append(starts[1:], n)
    positives_in_group = np.add.reduceat(positive[order].astype(np.int64), starts)
    doubled_rank_sum = int(np.sum((starts + 1 + ends).astype(np.int64) * positives_in_group))
    doubled_u = doubled_rank_sum - n_pos * (n_pos + 1)
    return doubled_u / (2 * n_pos * n_neg)  # Python integers: one correctly rounded division


def roc_auc_or_nan(scores: Any, labels: Any) -> float:
    """:func:`roc_auc` where the area is defined, NaN where it is not: labels of one class,
    a NaN score (a model whose outputs diverged), or targets other than 0 and 1 (soft
    labels). What a model's evaluation reports, so that it never fails for want of a ranking;
    shapes and lengths are still checked.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if labels.dtype.kind in "fiub" and labels.size == scores.size and labels.size:
        hard = bool(np.all((labels == 0) | (labels == 1)))
        both = hard and 0 < np.count_nonzero(labels) < labels.size
        if not both or (scores.dtype.kind == "f" and np.isnan(scores).any()):
            return math.nan
    return roc_auc(scores, labels)


def _positive_cut(threshold: float, from_logits: bool) -> float:
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    return math.log(threshold / (1 - threshold)) if from_logits else threshold


def binary_accuracy(scores: Any, labels: Any, *, threshold: float = 0.5, from_logits: bool = False) -> float:
    """Fraction of samples whose prediction (positive when the probability is above
    ``threshold``, as in Keras; with ``from_logits``, when the logit is above the threshold's
    logit, 0 for 0.5) equals the label."""
    scores, positive = _binary(scores, labels)
    predicted = scores > _positive_cut(threshold, from_logits)
    return float(np.count_nonzero(predicted == positive)) / scores.size


def binary_cross_entropy(scores: Any, labels: Any, *, from_logits: bool = False) -> float:
    """Mean binary cross-entropy ``-(t log p + (1-t) log(1-p))``, in float64.

    From logits x: ``max(x, 0) - x*t + log1p(exp(-|x|))``, as :class:`gpucnn.layers.SigmoidWithLoss`
    computes it. From probabilities: p is first clipped to ``[1e-7, 1 - 1e-7]``
    (:data:`PROBABILITY_EPSILON`), as Keras does; probabilities outside [0, 1] are refused.
    """
    scores, positive = _binary(scores, labels)
    x = scores.astype(np.float64)
    if from_logits:
        losses = np.maximum(x, 0) - x * positive + np.log1p(np.exp(-np.abs(x)))
    else:
        outside = np.flatnonzero((x < 0) | (x > 1))
        if outside.size:
            index = int(outside[0])
            raise ValueError(
                f"probability {x[index]} at index {index} is outside [0, 1] (logits? pass from_logits=True)"
            )
        p = np.clip(x, PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON)
        losses = -np.where(positive, np.log(p), np.log1p(-p))
    return float(np.mean(losses))


def binary_metrics(scores: Any, labels: Any, *, from_logits: bool = False) -> dict[str, float]:
    """``{"loss", "accuracy", "roc_auc"}`` of :func:`binary_cross_entropy`,
    :func:`binary_accuracy` (threshold 0.5) and :func:`roc_auc`.

    ``roc_auc`` is NaN when the labels hold one class only (the area is undefined there),
    so that a one-class evaluation set still reports its loss and accuracy.
    """
    _, positive = _binary(scores, labels)
    both = 0 < np.count_nonzero(positive) < positive.size
    return {
        "loss": binary_cross_entropy(scores, labels, from_logits=from_logits),
        "accuracy": binary_accuracy(scores, labels, from_logits=from_logits),
        "roc_auc": roc_auc(scores, labels) if both else math.nan,
    }
