"""Input checks shared by every loss in the package.

Two kinds live here:

* construction-time checks on Python arguments (``check_*``), which raise
  ``ValueError`` naming the argument and the value;
* run-time checks on arrays. In imperative mode labels can be read back and a bad
  one raises (:func:`check_labels`); inside a hybridized graph nothing can raise, so
  a bad label turns the loss NaN instead (:func:`poison_invalid` for CenterLoss; the
  softmax loss gets the same effect from a NaN-guarded weight lookup), which the
  first logged loss value shows.
"""
import math
import numbers

import numpy as np
import mxnet as mx


def check_int(name, value, minimum=None):
    """``value`` must be an integer (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError("%s must be an integer, got %r" % (name, value))
    if minimum is not None and value < minimum:
        raise ValueError("%s must be >= %d, got %r" % (name, minimum, value))
    return int(value)


def check_float(name, value, low=None, high=None, low_open=False, high_open=False):
    """``value`` must be a finite real number inside the given interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError("%s must be a finite number, got %r" % (name, value))
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = "%s%s, %s%s" % ("(" if low_open else "[", "-inf" if low is None else low,
                                   "inf" if high is None else high, ")" if high_open else "]")
        raise ValueError("%s must lie in %s, got %r" % (name, interval, value))
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError("%s must be one of %s, got %r" % (name, ", ".join(map(repr, choices)), value))
    return value


def check_ignore_label(value):
    """An ignore label is None (nothing ignored) or an integer such as -1 or 255."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise ValueError("ignore_label must be an integer or None, got %r" % (value,))
    return int(value)


def as_weight_vector(name, value, length=None):
    """Convert a list, NumPy array or NDArray of per-class weights to float32 NumPy.

    Rejects anything that is not 1-D, has the wrong length, or has a negative, NaN or
    infinite entry, and a vector whose entries are all zero (it would train nothing).
    """
    if isinstance(value, mx.nd.NDArray):
        value = value.asnumpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("%s must be a sequence of numbers, got %r" % (name, value))
    if array.ndim != 1 or array.size == 0:
        raise ValueError("%s must be a non-empty 1-D vector, got shape %s" % (name, array.shape))
    if length is not None and array.size != length:
        raise ValueError("%s must have length %d, got length %d" % (name, length, array.size))
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        raise ValueError("%s must be finite and >= 0, got %r at index %d"
                         % (name, array[bad[0]], bad[0]))
    if not np.any(array > 0):
        raise ValueError("%s must have at least one positive entry, got all zeros" % name)
    return array.astype(np.float32)


def check_shape(name, shape, expected, other_name):
    """Raise naming both shapes when ``shape`` differs from ``expected``."""
    if tuple(shape) != tuple(expected):
        raise ValueError("%s has shape %s but %s needs it to be %s"
                         % (name, tuple(shape), other_name, tuple(expected)))


def check_labels(label, num_classes, ignore_label, name="label"):
    """Imperative-mode check that every label is an integer class or the ignore label.

    This reads the labels back to the host, so callers run it only outside
    hybridized graphs.
    """
    values = label.asnumpy() if isinstance(label, mx.nd.NDArray) else np.asarray(label)
    kept = values if ignore_label is None else values[values != ignore_label]
    bad = kept[(kept < 0) | (kept >= num_classes) | (kept != np.floor(kept))]
    if bad.size:
        ignored = "" if ignore_label is None else " and is not ignore_label=%d" % ignore_label
        raise ValueError("%s contains %r, which is outside [0, %d)%s"
                         % (name, bad.flat[0].item(), num_classes, ignored))


def detached_label(F, label):
    """``label`` cut from autograd.

    Labels often come out of a recorded graph (GluonCV's target generator), and the
    ops that read them as indices (pick, take, Embedding) refuse to be asked for an
    index gradient ("wrong req", "Embedding layer doesn't support calculate data
    gradient"). Labels never need one.
    """
    return F.BlockGrad(label)


def poison_invalid(F, loss, invalid):
    """``loss`` plus NaN wherever ``invalid`` (a mask, or a count that broadcasts) is positive.

    This is the graph-mode stand-in for raising: sqrt of a negative number is NaN and
    sqrt(0) is 0, so one cheap op marks the loss without a branch. BlockGrad keeps
    the infinite derivative of sqrt at 0 out of the backward pass.
    """
    return F.broadcast_add(loss, F.BlockGrad(F.sqrt(-invalid)))


def apply_scalar_weight(loss, weight):
    """Multiply by the loss's global ``weight`` unless it is 1 (saves a graph node)."""
    return loss if weight == 1.0 else loss * weight


def ensure_on_context(param, ctx):
    """Copy a non-trainable parameter onto ``ctx`` the first time an input arrives there.

    Losses are used without ``initialize()``, on whatever context the data is on, so
    their constant parameters follow the data instead of failing on an unseen context.
    """
    contexts = param.list_ctx()
    if ctx not in contexts:
        param.reset_ctx(contexts + [ctx])
