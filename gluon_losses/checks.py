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
