"""Binary metrics against direct computations: ROC AUC against the O(N²) count of pairs,
accuracy and cross-entropy against their formulas and the loss layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpucnn
from gpucnn.layers import SigmoidWithLoss
from gpucnn.metrics import (
    PROBABILITY_EPSILON,
    binary_accuracy,
    binary_cross_entropy,
    binary_metrics,
    roc_auc,
    roc_auc_or_nan,
)
from gpucnn.models import build_model, two_layer_net


def pair_count_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Over every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    doubled = sum(2 * int(p > q) + int(p == q) for p in positives for q in negatives)
    return doubled / (2 * len(positives) * len(negatives))


@st.composite
def scored_labels(draw):
    """(scores, labels) with both classes present; half the cases draw scores from five
    values, so that ties, also across the classes, are common."""
    n = draw(st.integers(2, 60))
    labels = np.array([0, 1] + draw(st.lists(st.integers(0, 1), min_size=n - 2, max_size=n - 2)))
    if draw(st.booleans()):
        values = st.sampled_from([-1.0, 0.0, 0.25, 0.5, 3.0])
    else:
        values = st.floats(-1e6, 1e6, allow_nan=False, width=draw(st.sampled_from([32, 64])))
    dtype = np.float32 if draw(st.booleans()) else np.float64
    scores = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=dtype)
    return scores, labels


@settings(max_examples=300)
@given(scored_labels())
def test_roc_auc_equals_the_count_of_ordered_pairs(case):
    scores, labels = case
    assert 0 < labels.sum() < labels.size
    assert roc_auc(scores, labels) == pair_count_auc(scores, labels)  # both the exact fraction, rounded once


def test_roc_auc_on_cases_worked_by_hand():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc([0.2, 0.2, 0.2], [0, 1, 1]) == 0.5
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    # one positive tied with one of two negatives, above the other: (1 + 1/2) / 2
    assert roc_auc(np.array([[0.5], [0.5], [0.1]]), np.array([[1], [0], [0]])) == 0.75
    assert roc_auc([-0.0, 0.0], [True, False]) == 0.5
    assert roc_auc([-np.inf, np.inf], [0.0, 1.0]) == 1.0


def test_roc_auc_agrees_with_scikit_learn(rng):
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed")
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.standard_normal(500) + labels, 1)  # rounded: many ties
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), rel=1e-12)


@settings(max_examples=100)
@given(scored_labels())
def test_binary_accuracy_is_the_share_of_right_answers(case):
    scores, labels = case
    with np.errstate(over="ignore"):  # exp(1e6): the probability is then 0
        probabilities = 1 / (1 + np.exp(-scores.astype(np.float64)))
    expected = np.mean((probabilities > 0.5) == (labels == 1))
    assert binary_accuracy(probabilities, labels) == expected
    assert binary_accuracy(scores, labels, from_logits=True) == np.mean((scores > 0) == (labels == 1))
    assert binary_accuracy(probabilities, labels, threshold=0.9) == np.mean((probabilities > 0.9) == (labels == 1))
    cut = math.log(0.9 / 0.1)
    assert binary_accuracy(scores, labels, threshold=0.9, from_logits=True) == np.mean((scores > cut) == (labels == 1))


def test_binary_accuracy_counts_a_probability_of_exactly_one_half_as_negative():
    assert binary_accuracy([0.5, 0.5], [0, 1]) == 0.5
    assert binary_accuracy([0.0], [0], from_logits=True) == 1.0


@settings(max_examples=100)
@given(scored_labels())
def test_binary_cross_entropy_follows_its_formula(case):
    scores, labels = case
    x = scores.astype(np.float64)
    # -log(sigmoid(x)) = log(1 + exp(-x)) and -log(1 - sigmoid(x)) = log(1 + exp(x)): positive
    # terms, so their mean has nothing to cancel.
    terms = np.logaddexp(0, np.where(labels == 1, -x, x))
    np.testing.assert_allclose(binary_cross_entropy(x, labels, from_logits=True), terms.mean(), rtol=1e-13)
    with np.errstate(over="ignore"):
        p = 1 / (1 + np.exp(-x))
    clipped = np.clip(p, PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON)
    naive = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    # log(1 - p) is off by about one rounding of 1 - p, an absolute error near eps per term.
    np.testing.assert_allclose(binary_cross_entropy(p, labels), naive.mean(), rtol=1e-12, atol=1e-15)


def test_binary_cross_entropy_from_logits_matches_the_loss_layer(rng):
    logits = rng.normal(0, 8, size=(64, 1))
    labels = rng.integers(0, 2, 64)
    with gpucnn.use_backend("numpy"):
        layer = SigmoidWithLoss()
        layer.build((1,), rng)
        expected = float(layer.forward(logits, labels.astype(np.float64)))
    assert binary_cross_entropy(logits, labels, from_logits=True) == pytest.approx(expected, rel=1e-13)


def test_binary_cross_entropy_clips_probabilities_as_keras_does():
    assert binary_cross_entropy([0.0], [1]) == pytest.approx(-math.log(PROBABILITY_EPSILON), rel=1e-12)
    assert binary_cross_entropy([1.0, 0.0], [1, 0]) == pytest.approx(-math.log1p(-PROBABILITY_EPSILON), rel=1e-9)
    with pytest.raises(ValueError, match=r"probability 1.5 at index 1 is outside \[0, 1\] \(logits\?"):
        binary_cross_entropy([0.5, 1.5], [0, 1])


def test_binary_metrics_reports_the_three_and_nan_auc_for_one_class():
    logits = np.array([[2.0], [-1.0], [0.5]])
    metrics = binary_metrics(logits, [1, 0, 0], from_logits=True)
    assert metrics == {
        "loss": binary_cross_entropy(logits, [1, 0, 0], from_logits=True),
        "accuracy": 2 / 3,
        "roc_auc": 1.0,
    }
    one_class = binary_metrics([0.9, 0.2], [1, 1])
    assert one_class["accuracy"] == 0.5 and math.isnan(one_class["roc_auc"])
    with pytest.raises(ValueError, match="ROC AUC needs both classes, got 2 positive and 0 negative labels"):
        roc_auc([0.9, 0.2], [1, 1])


@pytest.mark.parametrize(
    ("scores", "labels", "error", "message"),
    [
        ([0.1, 0.2], [0, 2], ValueError, "labels must be 0 or 1, got 2 at index 1"),
        ([0.1, 0.2], [0.0, 0.5], ValueError, "labels must be 0 or 1, got 0.5 at index 1"),
        ([0.1, np.nan, np.nan], [0, 1, 1], ValueError, r"score 1 is NaN \(2 NaN scores in all\)"),
        ([0.1, 0.2, 0.3], [0, 1], ValueError, "3 scores for 2 labels"),
        ([[0.1, 0.9], [0.8, 0.2]], [0, 1], ValueError, r"scores must be \(N,\) or \(N, 1\).*got shape \(2, 2\)"),
        ([], [], ValueError, "no samples"),
        (["a", "b"], [0, 1], TypeError, "scores must be real numbers"),
    ],
)
def test_metrics_refuse_bad_inputs(scores, labels, error, message):
    for metric in (roc_auc, binary_accuracy, binary_cross_entropy, binary_metrics):
        with pytest.raises(error, match=message):
            metric(scores, labels)


def test_roc_auc_or_nan_is_nan_only_where_the_area_is_undefined():
    assert roc_auc_or_nan([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc_or_nan(np.array([[0.5], [0.5]]), np.array([[1.0], [0.0]])) == 0.5
    assert math.isnan(roc_auc_or_nan([0.1, 0.4], [1, 1]))  # one class
    assert math.isnan(roc_auc_or_nan([0.1, np.nan, 0.3], [0, 1, 1]))  # a diverged model
    assert math.isnan(roc_auc_or_nan([0.1, 0.4], [0.2, 0.9]))  # soft labels
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        roc_auc_or_nan([0.1, 0.2, 0.3], [0, 1])


# -- a model's evaluation -----------------------------------------------------------------


def binary_problem(rng):
    """A binary_mlp (float64) and 40 samples of 3 features, 10 of them repeated under the
    other label, so that the logits tie across the classes."""
    x = rng.normal(size=(30, 3))
    t = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    x, t = np.concatenate([x, x[:10]]), np.concatenate([t, 1 - t[:10]])
    return build_model("binary_mlp", (3,), 2, dtype="float64", seed=1), x, t


def test_evaluate_reports_the_binary_metrics_of_the_logits(backend, rng):
    model, x, t = binary_problem(rng)
    model.fit(x, t, batch_size=8, epochs=3, optimizer="adam", seed=0, verbose=0)
    logits = backend.to_numpy(model.predict(x, batch_size=16)).ravel()
    assert len(np.unique(logits)) == 30  # the repeated samples tie
    results = model.evaluate(x, t, batch_size=16, return_dict=True)
    assert set(results) == {"loss", "accuracy", "roc_auc"}
    assert results["roc_auc"] == pair_count_auc(logits, t)
    assert results["accuracy"] == np.mean((logits > 0) == (t == 1))
    # The mean of positive terms: nothing cancels, so a relative tolerance of a few roundings.
    assert results["loss"] == pytest.approx(np.logaddexp(0, np.where(t == 1, -logits, logits)).mean(), rel=1e-12)
    assert model.evaluate(x, t, batch_size=16) == (results["loss"], results["accuracy"])  # the tuple by default
    probabilities = backend.to_numpy(model.predict_proba(x, batch_size=16)).ravel()
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-14)
    assert binary_accuracy(probabilities, t) == results["accuracy"]


def test_fit_records_the_validation_roc_auc_of_every_epoch(rng):
    model, x, t = binary_problem(rng)
    after_epoch = []

    def rank_after_epoch(m, epoch, logs):
        after_epoch.append(pair_count_auc(np.asarray(m.predict(x[20:], batch_size=20)).ravel(), t[20:]))

    model.fit(
        x[:30],
        t[:30],
        batch_size=8,
        epochs=3,
        optimizer="adam",
        seed=0,
        verbose=0,
        validation_data=(x[20:], t[20:]),
        eval_batch_size=20,
        callbacks=[rank_after_epoch],
    )
    assert model.history.history["val_roc_auc"] == after_epoch
    assert len(set(after_epoch)) > 1  # training changes the ranking


def test_a_softmax_model_reports_no_roc_auc(rng):
    model = two_layer_net((3,), 2, dtype="float64", seed=0)
    x, t = rng.normal(size=(12, 3)), np.arange(12) % 2
    assert set(model.evaluate(x, t, return_dict=True)) == {"loss", "accuracy"}
    assert model.num_classes == 2 and build_model("binary_mlp", (3,), 2).num_classes == 2
