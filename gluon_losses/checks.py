"""Input checks shared by every loss in the package; each raises ``ValueError``
naming the argument and the value.

Two kinds live here:

* construction-time checks on Python arguments (``check_*``, ``as_weight_vector``);
* imperative-mode checks on arrays (:func:`check_shape`, :func:`check_labels`).
  Inside a hybridized graph nothing can raise, so a bad label turns the loss NaN
  instead; the graph operations that do that live in :mod:`gluon_losses.graph_ops`.
"""
import math
import numbers

import numpy as np
import mxnet as mx

# MXNet passes scalar arguments to its operators as float32: a nonzero value below the
# smallest normal float32 is refused ("Out of range value for scalar") or flushed, and
# one above the largest becomes inf. Arguments outside this range are refused here.
_FLOAT32 = np.finfo(np.float32)
# The largest integer up to which every integer is exact in float32, the labels' dtype.
MAX_EXACT_LABEL = 2 ** 24


def check_bool(name, value):
    """``value`` must be a bool (``numpy.bool_`` included), never a string or a number."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError("%s must be True or False, got %r" % (name, value))
    return bool(value)


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
    if value != 0 and not _FLOAT32.tiny <= abs(value) <= _FLOAT32.max:
        raise ValueError("%s must be 0 or between %.4g and %.4g in magnitude (float32, which "
                         "MXNet computes in), got %r" % (name, _FLOAT32.tiny, _FLOAT32.max, value))
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
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value != int(value)):
        raise ValueError("ignore_label must be an integer or None, got %r" % (value,))
    if abs(value) > MAX_EXACT_LABEL:
        raise ValueError("ignore_label must lie in [-%d, %d] (labels travel as float32), got %r"
                         % (MAX_EXACT_LABEL, MAX_EXACT_LABEL, value))
    return int(value)


def check_center_loss_args(num_classes, feature_dim, alpha, weight, ignore_label):
    """The arguments that ``CenterLoss`` and ``symbol.center_loss`` share, checked and
    converted: ``(num_classes, feature_dim, alpha, weight, ignore_label)``."""
    num_classes = check_int("num_classes", num_classes, 1)
    if num_classes > MAX_EXACT_LABEL:
        raise ValueError("num_classes must be <= %d (labels travel as float32 ids), got %d"
                         % (MAX_EXACT_LABEL, num_classes))
    return (num_classes, check_int("feature_dim", feature_dim, 1),
            check_float("alpha", alpha, 0.0, 1.0, low_open=True),
            check_float("weight", weight, 0.0), check_ignore_label(ignore_label))


def as_weight_vector(name, value, length=None):
    """Convert a list, NumPy array or NDArray of per-class weights to float32 NumPy.

    Rejects anything that is not 1-D, has the wrong length, or has a negative, NaN or
    infinite entry, and a vector whose entries are all zero (it would train nothing).
    """
    if isinstance(value, mx.nd.NDArray):
        value = value.asnumpy()
    # Strings, bools and objects are refused rather than coerced: ["1", "2"] and
    # [True, False] are almost certainly mistakes.
    raw = np.asarray(value)
    if raw.dtype.kind not in "iuf":
        raise ValueError("%s must be a sequence of numbers, got %r" % (name, value))
    array = raw.astype(np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("%s must be a non-empty 1-D vector, got shape %s: %r"
                         % (name, array.shape, value))
    if length is not None and array.size != length:
        raise ValueError("%s must have length %d, got length %d" % (name, length, array.size))
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        raise ValueError("%s must be finite and >= 0, got %r at index %d"
                         % (name, array[bad[0]], bad[0]))
    bad = np.flatnonzero((array > _FLOAT32.max) | ((array > 0) & (array < _FLOAT32.tiny)))
    if bad.size:
        raise ValueError("%s entries must be 0 or between %.4g and %.4g (float32), got %r at "
                         "index %d" % (name, _FLOAT32.tiny, _FLOAT32.max, array[bad[0]], bad[0]))
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
    fractional = kept[kept != np.floor(kept)]
    if fractional.size:
        raise ValueError("%s contains %r, which is not an integer class index"
                         % (name, fractional.flat[0].item()))
    bad = kept[(kept < 0) | (kept >= num_classes)]
    if bad.size:
        ignored = "" if ignore_label is None else " and is not ignore_label=%d" % ignore_label
        raise ValueError("%s contains %r, which is outside [0, %d)%s"
                         % (name, bad.flat[0].item(), num_classes, ignored))


def as_ndarray(name, value, ctx=None):
    """``value`` as an NDArray: NDArrays and Symbols pass through; NumPy arrays and
    (nested) lists of numbers are copied onto ``ctx`` (CPU when None), float data
    keeping its dtype, integer and bool data becoming float32.

    Anything else raises ``ValueError`` naming the argument.
    """
    if isinstance(value, (mx.nd.NDArray, mx.sym.Symbol)):
        return value
    array = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
    if array is None or array.dtype.kind not in "biuf":
        raise ValueError("%s must be an NDArray, a NumPy array or a list of numbers, got %r"
                         % (name, value))
    if array.dtype.kind != "f":
        array = array.astype(np.float32)
    return mx.nd.array(array, ctx=ctx or mx.cpu(), dtype=array.dtype)


def on_context(name, value, ctx):
    """``value`` as an NDArray on ``ctx`` (the context of ``pred``): NumPy arrays and lists
    are copied there, and an NDArray elsewhere raises ``ValueError`` naming both contexts."""
    if not isinstance(value, mx.nd.NDArray):
        return as_ndarray(name, value, ctx)
    if value.context != ctx:
        raise ValueError("%s is on %s but pred is on %s; a loss computes on one context"
                         % (name, value.context, ctx))
    return value


def check_not_empty(name, shape):
    """MXNet's operators read a 0 in a shape as "unknown" and cannot run on empty arrays."""
    if 0 in shape:
        raise ValueError("%s is empty (shape %s): MXNet cannot run operators on empty "
                         "arrays; skip the batch" % (name, tuple(shape)))
