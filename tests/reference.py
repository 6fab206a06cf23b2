"""Float64 NumPy references that the losses are tested against, and run_loss, which
gives a loss's value and gradient as float64 NumPy to compare with them."""
import numpy as np
import mxnet as mx
from mxnet import autograd


def run_loss(loss_fn, pred, *args, ctx=mx.cpu()):
    """Loss value and d(sum of the output)/d(pred), as float64 NumPy.

    ``pred`` keeps its dtype; every other argument (label, sample weight, ...) becomes
    an NDArray on ``ctx``, and one that is None is left out.
    """
    pred_nd = mx.nd.array(pred, ctx=ctx, dtype=pred.dtype)
    pred_nd.attach_grad()
    args = [mx.nd.array(a, ctx=ctx) for a in args if a is not None]
    with autograd.record():
        out = loss_fn(pred_nd, *args)
    out.backward()
    return out.asnumpy().astype(np.float64), pred_nd.grad.asnumpy().astype(np.float64)


def log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def logsumexp(x, axis=-1):
    top = x.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def log_one_minus_prob(logits):
    """log(1 - p_c) for every class c along the last axis, from the logits (float64).

    The sum of the other classes' probabilities, in the log domain: exact where
    1 - p_c is far below float64's range (a logit gap of 1e4), where 1 - exp(log p)
    rounds to 0. -inf with a single class.
    """
    num_classes = logits.shape[-1]
    out = np.empty(logits.shape)
    total = logsumexp(logits)
    for c in range(num_classes):
        others = np.delete(logits, c, axis=-1)
        out[..., c] = (logsumexp(others) if num_classes > 1 else -np.inf) - total
    return out


def focal_factor(logits, gamma):
    """(1 - p)^gamma per class, in the log domain (exactly 0 with one class)."""
    return np.exp(gamma * log_one_minus_prob(logits))


def softmax_ce(pred, label, class_weight=None, sample_weight=None, axis=-1, sparse_label=True,
               from_logits=False, ignore_label=-1, normalization="valid", label_smoothing=0.0,
               gamma=0.0, batch_axis=0):
    """What WeightedSoftmaxCELoss must return, written from the formulas in float64."""
    pred = np.moveaxis(np.asarray(pred, dtype=np.float64), axis, -1)
    num_classes = pred.shape[-1]
    log_prob = pred if from_logits else log_softmax(pred)
    weights = np.ones(num_classes) if class_weight is None else np.asarray(class_weight, np.float64)
    eps = label_smoothing
    if sparse_label:
        label = np.asarray(label)
        keep = np.ones(label.shape, bool) if ignore_label is None else label != ignore_label
        index = np.where(keep, label, 0).astype(np.int64)
        target = np.take_along_axis(log_prob, index[..., None], axis=-1)[..., 0]
        loss = -((1 - eps) * target + eps / num_classes * log_prob.sum(axis=-1))
        if gamma:
            factor = focal_factor(pred, gamma)
            loss = loss * np.take_along_axis(factor, index[..., None], axis=-1)[..., 0]
        position_weight = weights[index] * keep
    else:
        target = (1 - eps) * np.moveaxis(np.asarray(label, np.float64), axis, -1) + eps / num_classes
        per_class = target * log_prob * weights
        if gamma:
            per_class = per_class * focal_factor(pred, gamma)
        loss = -per_class.sum(axis=-1)
        keep = np.ones(loss.shape, bool)
        position_weight = np.ones(loss.shape)
    sample = np.ones(loss.shape) if sample_weight is None else np.broadcast_to(
        np.asarray(sample_weight, np.float64), loss.shape)
    loss = loss * position_weight * sample
    if normalization == "none":
        return loss
    if normalization == "valid":
        total = max(keep.sum(), 1)
    elif normalization == "batch":
        total = loss.size
    elif normalization == "weight":
        # Magnitudes: negative sample weights flip their positions' sign only.
        total = np.abs(position_weight * sample * keep).sum()
        total = total if total > 0 else 1.0
    else:
        total = 1.0
    other_axes = tuple(i for i in range(loss.ndim) if i != batch_axis)
    return loss.sum(axis=other_axes) * loss.shape[batch_axis] / total


def eq4_reference(centers, x, y, alpha, ignore_label=None):
    """Float64 NumPy Eq. 4 with per-class counts over the whole batch."""
    centers = centers.astype(np.float64).copy()
    keep = np.ones(len(y), bool) if ignore_label is None else y != ignore_label
    new = centers.copy()
    for j in np.unique(y[keep]).astype(int):
        members = keep & (y == j)
        n_j = members.sum()
        new[j] = centers[j] - alpha * (centers[j] - x[members]).sum(axis=0) / (1.0 + n_j)
    return new


def loss_reference(centers, x, y, weight, ignore_label=None):
    """Float64 center loss per sample and its feature gradient."""
    keep = np.ones(len(y), bool) if ignore_label is None else y != ignore_label
    c = centers[np.where(keep, y, 0).astype(int)]
    value = np.where(keep, 0.5 * weight * ((x - c) ** 2).sum(axis=1), 0.0)
    grad = np.where(keep[:, None], weight * (x - c), 0.0)
    return value, grad


def numeric_gradient(function, x, step=1e-6):
    """Central differences of the scalar ``function`` at ``x`` (float64)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        original = x[i]
        x[i] = original + step
        upper = function(x)
        x[i] = original - step
        lower = function(x)
        x[i] = original
        grad[i] = (upper - lower) / (2 * step)
    return grad


def reference_grad(pred, label, step=1e-6, **kwargs):
    """Central differences of the summed :func:`softmax_ce` (``kwargs``) at ``pred``."""
    return numeric_gradient(lambda x: softmax_ce(x, label, **kwargs).sum(),
                            pred.astype(np.float64), step=step)
