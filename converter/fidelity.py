"""Fidelity of an artifact against the fp32 reference, by output kind, and the bounds an ``ok`` one meets.

Output kind (``auto`` decides from the reference's output shape; ``--output-kind`` overrides it):

- ``classification``: one score per class and sample, shape [N, classes] (singleton dimensions ignored),
  classes > 1. Scored by top-1 agreement with the reference (percent of samples with the same argmax) and,
  when the validation data has labels, by accuracy. This basis needs an *informative* reference: if
  predicting the reference's most common class for every sample would itself fit the accuracy budget
  (e.g. a model that predicts one class on the whole set), agreement cannot tell a good artifact from a
  broken one, so the converter warns and judges the artifacts on continuous metrics instead.
- ``dense``: anything else (segmentation/detection maps, embeddings, regressions, audio frames). Never
  scored by an argmax (over all pixels or otherwise) and never by ``accuracy``.

Continuous metrics, always computed (each sample's outputs flattened, float64): ``cosine`` (of the whole
validation set's outputs), ``relative_error`` (||out - ref|| / ||ref||, the same vectors), max and mean
absolute error. Classification outputs also get ``probability_cosine``: the cosine of the class
probabilities (softmax of each sample's scores; the scores themselves when every row already is a
probability distribution). Logits are unbounded and int8 moves the small ones most, which changes no
decision; probabilities weigh the classes a decision rests on, so that cosine is the continuous bound a
classifier is held to.

Bounds (:class:`FidelityBounds`): the *basis* decides what an ``ok`` artifact must meet.
``accuracy`` (labels) / ``top1``: at most ``max_accuracy_drop`` points lost *and* probability cosine >=
``min_cosine``; ``continuous``: cosine >= ``min_cosine`` (0.99 by default) and, when set, relative error <=
``max_relative_error``. No artifact whose judged cosine is below ``min_cosine`` is ``ok``. An artifact
outside them is ``degraded``: kept and shown, never recommended nor pushed by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from converter.errors import ConvertError
from wire.manifest import Fidelity

OutputKind = Literal["classification", "dense"]
OUTPUT_KINDS = ("auto", "classification", "dense")
Basis = Literal["accuracy", "top1", "continuous"]


@dataclass(frozen=True)
class FidelityBounds:
    max_accuracy_drop: float = 1.0  # points (accuracy or top-1 agreement), classification bases
    min_cosine: float = 0.99  # continuous basis
    max_relative_error: float | None = None  # continuous basis, off unless set


@dataclass(frozen=True)
class ReferenceProfile:
    """What the fp32 outputs on the validation set allow fidelity to claim."""

    kind: OutputKind
    basis: Basis
    classes_seen: int | None = None  # distinct top-1 classes the reference predicts (classification)
    majority_pct: float | None = None  # percent of samples in the reference's most common class
    warning: str | None = None  # why the basis fell back to continuous metrics


@dataclass(frozen=True)
class Verdict:
    fidelity: Fidelity
    miss: str | None  # which bound the artifact misses; None = within the bounds
    summary: str  # the figures the basis judges on, for logs and pass notes


def per_sample(outputs: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N, features] float64."""
    arr = np.asarray(outputs, dtype=np.float64)
    return arr.reshape(len(arr), -1) if arr.ndim > 1 else arr.reshape(-1, 1)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """[N, classes] -> class probabilities: the rows themselves when each is already a distribution
    (non-negative, summing to 1 within 1e-3), else a numerically stable softmax."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.size and np.all(arr >= 0) and np.allclose(arr.sum(axis=1), 1.0, atol=1e-3):
        return arr
    shifted = arr - arr.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two equally shaped arrays, flattened; two all-zero arrays are 1 when equal."""
    denom = float(np.linalg.norm(a)) * float(np.linalg.norm(b))
    if not denom:
        return float(bool(np.array_equal(a, b)))
    return float(np.clip(np.dot(a.ravel(), b.ravel()) / denom, -1.0, 1.0))


def output_kind(outputs: np.ndarray, requested: str = "auto") -> OutputKind:
    if requested not in OUTPUT_KINDS:
        raise ConvertError(f"output kind {requested!r} is not one of {list(OUTPUT_KINDS)}")
    features = [d for d in np.shape(outputs)[1:] if d != 1]
    is_scores = len(features) == 1 and features[0] > 1
    if requested == "classification" and not is_scores:
        raise ConvertError(
            f"output kind 'classification' needs outputs of shape [N, classes]; the reference's are "
            f"{list(np.shape(outputs))} (use --output-kind dense)"
        )
    if requested != "auto":
        return requested  # type: ignore[return-value]
    return "classification" if is_scores else "dense"


def profile_reference(
    outputs: np.ndarray, labels: np.ndarray | None, bounds: FidelityBounds, requested: str = "auto"
) -> ReferenceProfile:
    kind = output_kind(outputs, requested)
    if kind == "dense":
        return ReferenceProfile("dense", "continuous")
    top1 = per_sample(outputs).argmax(1)
    counts = np.bincount(top1)
    majority = float(counts.max() / len(top1) * 100) if len(top1) else 100.0
    classes = int(np.count_nonzero(counts))
    if majority >= 100.0 - bounds.max_accuracy_drop:
        warning = (
            f"the fp32 reference predicts class {int(counts.argmax())} for {majority:.1f}% of the "
            f"{len(top1)} validation samples ({classes} class(es) seen): always predicting it would fit the "
            f"{bounds.max_accuracy_drop} pt budget, so top-1 agreement cannot tell a good artifact from a "
            f"broken one; fidelity is judged on continuous metrics (cosine >= {bounds.min_cosine})"
        )
        return ReferenceProfile("classification", "continuous", classes, majority, warning)
    basis: Basis = "accuracy" if labels is not None else "top1"
    return ReferenceProfile("classification", basis, classes, majority)


def fidelity(
    reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None, kind: OutputKind | None = None
) -> Fidelity:
    """Every metric the output kind supports (``kind`` None: decided from the reference's shape)."""
    if np.shape(reference) != np.shape(outputs):
        raise ConvertError(
            f"output shape {list(np.shape(outputs))} differs from the reference's {list(np.shape(reference))}"
        )
    kind = kind or output_kind(reference)
    ref, out = per_sample(reference), per_sample(outputs)
    err = np.abs(ref - out)
    norm_ref = float(np.linalg.norm(ref))
    same = bool(np.array_equal(ref, out))
    diff = float(np.linalg.norm(ref - out))
    relative = diff / norm_ref if norm_ref else (0.0 if same else float("inf"))
    agree = acc = ref_acc = delta = prob_cos = None
    if kind == "classification":
        prob_cos = cosine(probabilities(ref), probabilities(out))
        agree = float(np.mean(ref.argmax(1) == out.argmax(1)) * 100)
        if labels is not None:
            acc = float(np.mean(out.argmax(1) == labels) * 100)
            ref_acc = float(np.mean(ref.argmax(1) == labels) * 100)
            delta = acc - ref_acc
    return Fidelity(
        accuracy=acc,
        reference_accuracy=ref_acc,
        accuracy_delta=delta,
        top1_agreement=agree,
        max_abs_error=float(err.max()) if err.size else 0.0,
        mean_abs_error=float(err.mean()) if err.size else 0.0,
        cosine=cosine(ref, out),
        relative_error=relative,
        probability_cosine=prob_cos,
    )


def accuracy_drop(fid: Fidelity) -> float | None:
    """Points lost against the reference: from labels when present, else from top-1 disagreement; None
    for outputs that have no classes (dense)."""
    if fid.accuracy_delta is not None:
        return 0.0 - fid.accuracy_delta + 0.0
    if fid.top1_agreement is not None:
        return 100.0 - fid.top1_agreement
    return None


def judge(fid: Fidelity, profile: ReferenceProfile, bounds: FidelityBounds) -> Verdict:
    """Within the bounds of the reference's basis, or which one it misses."""
    if profile.basis in ("accuracy", "top1"):
        drop = accuracy_drop(fid)
        assert drop is not None  # a classification basis always has agreement
        what = "accuracy" if profile.basis == "accuracy" else "top-1 agreement"
        misses = []
        if drop > bounds.max_accuracy_drop:
            misses.append(f"{what} drop {drop:.2f} pt > budget {bounds.max_accuracy_drop} pt")
        prob = fid.probability_cosine if fid.probability_cosine is not None else float("nan")
        if not prob >= bounds.min_cosine:  # NaN misses too
            misses.append(f"probability cosine {prob:.4f} < {bounds.min_cosine}")
        return Verdict(fid, "; ".join(misses) or None, f"drop {drop:.2f} pt, probability cosine {prob:.4f}")
    cosine = fid.cosine if fid.cosine is not None else float("nan")
    rel = fid.relative_error if fid.relative_error is not None else float("nan")
    misses = []
    if not cosine >= bounds.min_cosine:  # NaN misses too
        misses.append(f"cosine {cosine:.4f} < {bounds.min_cosine}")
    if bounds.max_relative_error is not None and not rel <= bounds.max_relative_error:
        misses.append(f"relative error {rel:.4g} > {bounds.max_relative_error}")
    return Verdict(fid, "; ".join(misses) or None, f"cosine {cosine:.4f}, relative error {rel:.3g}")
