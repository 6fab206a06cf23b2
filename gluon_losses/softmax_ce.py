r"""Class-weighted softmax cross-entropy with an ignore label.

:func:`weighted_softmax_ce` is the functional core, written once for both
``F=mx.nd`` and ``F=mx.sym``; :class:`WeightedSoftmaxCELoss` is the thin Gluon
``Loss`` over it that owns the class weights as a saved, exported parameter and
checks its inputs.
"""
import numpy as np
import mxnet as mx
from mxnet.gluon.loss import Loss

from .checks import (as_ndarray, as_weight_vector, check_bool, check_choice, check_float,
                     check_ignore_label, check_labels, on_context)
from .export import PortableExport
from .shapes import shape_plan
from .mxnet_internals import SerializedFirstCall, built_graph, clear_graph, is_hybridized
from .graph_ops import CLIP_MAX, apply_scalar_weight, detached_label, ensure_on_context
from . import fused

__all__ = ["WeightedSoftmaxCELoss", "weighted_softmax_ce", "NORMALIZATIONS"]

NORMALIZATIONS = ("valid", "batch", "weight", "null", "none")

_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Multiplying by a power of two is exact, so the mean over classes of log-probabilities
# as large as -3e38 is formed without its sum overflowing; only magnitudes below about
# 5e-29 lose precision, far below what the loss resolves.
_MEAN_SCALE = 2.0 ** -32
_LOG_HALF = float(np.log(0.5))
_LOG_THREE_QUARTERS = float(np.log(0.75))
def _class_axis_shape(axis, ndim):
    """Reshape spec that lays a (C,) vector along ``axis`` of an ``ndim``-D array."""
    if axis >= 0 and ndim is None:
        raise ValueError("dense labels with class weights and axis=%d need pred's number of "
                         "dimensions; call the loss once with NDArrays, or use a negative "
                         "axis, got ndim=None" % axis)
    trailing = -axis - 1 if axis < 0 else ndim - axis - 1
    return (-1,) + (1,) * trailing


# An ignore label at most this far below 0 gets its own slot of 0 in the weight table;
# one further away (or at or above 0) is zeroed by a mask instead.
_MAX_TABLE_GAP = 1024


def _weight_table(F, class_weight, pred, axis, ignore_label):
    """``(table, offset)``: ``table[label + offset]`` is the class weight of a label in
    ``[0, C)``, 0 for a negative ``ignore_label`` given here, and NaN for every other integer.

    A NaN at each end catches, through take's clipping, every label below or above the
    table, so one lookup both weighs a position and poisons a bad label, without a
    separate range test and reduction.
    """
    if class_weight is None:
        class_weight = F.ones_like(F.contrib.arange_like(pred, axis=axis))
    first = F.slice_axis(class_weight, axis=0, begin=0, end=1)
    nan = first * float("nan")
    if ignore_label is None:
        return F.concat(nan, class_weight, nan, dim=0), 1
    gap = -ignore_label - 1  # the labels between the ignore label and class 0
    below = [nan, first * 0] + ([F.tile(nan, reps=(gap,))] if gap else [])
    return F.concat(*(below + [class_weight, nan]), dim=0), gap + 2


def _table_ignores(ignore_label):
    """Whether :func:`_weight_table` gives ``ignore_label`` a slot of its own."""
    return ignore_label is not None and -_MAX_TABLE_GAP <= ignore_label < 0


def _sum_all(F, values, mask=None):
    """Sum of every element of ``values``, zero wherever ``mask`` (0/1) is 0.

    A dot product of the flattened arrays is a single BLAS call, many times faster
    on CPU than MXNet's generic full reduction.
    """
    flat = F.reshape(values, shape=(-1,))
    return F.dot(flat, flat if mask is None else F.reshape(mask, shape=(-1,)))


def weighted_softmax_ce(F, pred, label, class_weight=None, sample_weight=None, axis=-1,
                        sparse_label=True, from_logits=False, ignore_label=-1,
                        normalization="valid", label_smoothing=0.0, gamma=0.0, batch_axis=0,
                        ndim=None, num_classes=None):
    r"""Weighted softmax cross-entropy for ``F`` in (``mx.nd``, ``mx.sym``).

    See :class:`WeightedSoftmaxCELoss` for the math and the meaning of every
    argument. ``pred`` and ``label`` are float32; ``class_weight`` is a ``(C,)``
    array or None. ``ndim`` is ``pred.ndim`` when known: it lets 1-D labels skip a
    per-sample reduction, and dense labels with class weights need it to lay the
    weights along a non-negative ``axis``. ``num_classes`` is C when known: with one
    class the loss is exactly 0.

    Returns ``(batch,)`` for every normalization but ``'none'``, which returns the
    per-position losses (shaped like ``label``; for dense labels, ``pred`` without
    ``axis``).
    """
    if sparse_label and _moves_class_axis(axis, ndim):
        # log_softmax along a strided axis (NCHW) costs about twice a transpose followed
        # by log_softmax along the last axis; the label's positions keep their order.
        pred = F.transpose(pred, axes=[d for d in range(ndim) if d != axis % ndim] + [axis % ndim])
        axis = -1
    if from_logits:
        log_prob = pred
    elif num_classes == 1:
        # One class has probability 1; MXNet's log_softmax gives 1.4e-6 for it, a
        # negative loss with a gradient. pred - pred is exactly 0, with gradient 0.
        log_prob = pred - pred
    else:
        log_prob = F.log_softmax(pred, axis=axis)
    label = detached_label(F, label)
    if class_weight is not None:
        # Constants in every graph: run by Module or a SymbolBlock, the weights would
        # otherwise get a gradient, NaN from the padding of the guarded lookup.
        class_weight = F.BlockGrad(class_weight)
    sign = 1.0
    if sparse_label:
        # pick clips a label outside [0, C), the ignore label included, onto a real class;
        # the weight lookup below gives such a position 0 (ignored) or NaN (a bad label).
        target_log_prob = F.pick(log_prob, label, axis=axis)
        if label_smoothing == 0 and gamma == 0:
            # The minus sign goes into the weight table: one fewer backward node.
            value, sign = target_log_prob, -1.0
            # A log-probability; one given as input (from_logits) may be anything.
            value_sign = 0 if from_logits else -1
        else:
            value_sign = 1  # cross-entropy against a distribution, focal or not
            value = -target_log_prob
            if label_smoothing > 0:
                value = (1 - label_smoothing) * value - label_smoothing * _safe_mean(
                    F, log_prob, axis=axis)
            if gamma > 0:
                log_one_minus_p = _log_one_minus_prob(
                    F, pred, target_log_prob, F.pick(pred, label, axis=axis), axis, False)
                value = _focal(F, value, log_one_minus_p, gamma)
        position_weight = position_weights(
            F, label, class_weight, pred, axis, ignore_label, normalization, sign)
        positions = label
    else:
        if class_weight is not None:
            class_weight = F.reshape(class_weight, shape=_class_axis_shape(axis, ndim))
        target = label
        if label_smoothing > 0:
            target = (1 - label_smoothing) * target + label_smoothing * F.softmax(
                F.zeros_like(log_prob), axis=axis)
        if class_weight is not None:
            target = F.broadcast_mul(target, class_weight)
        # A class with (weighted) target 0 contributes exactly 0, even where its
        # log-probability overflows to -inf.
        per_class = F.where(target != 0, target * log_prob, F.zeros_like(log_prob))
        if gamma > 0:
            per_class = -_focal(F, -per_class, _log_one_minus_prob(F, pred, log_prob, pred,
                                                                   axis, True), gamma)
        value = -F.sum(per_class, axis=axis)
        position_weight = None
        value_sign = 0  # targets of any sign
        # A label-side array shaped like the positions (pred without the class axis).
        positions = F.sum(F.slice_axis(label, axis=axis, begin=0, end=1), axis=axis)
    weight = _product(F, position_weight, sample_weight)
    if normalization == "weight" or (normalization != "none" and not sparse_label):
        weight = _product(F, weight, _normalizer(F, normalization, None, weight, positions))
    loss = value if weight is None else _weigh(F, value, weight, value_sign)
    if normalization == "none" or ndim == 2:
        return loss  # with 1-D labels every position is a sample
    return _safe_mean(F, loss, axis=batch_axis, exclude=True)


def position_weights(F, label, class_weight, pred, axis, ignore_label, normalization="none",
                     sign=1.0):
    """Each position's class weight for sparse labels, 0 where ignored and NaN for a bad
    label (outside ``[0, C)``, not an integer, or -1 when -1 is not ignored), times
    ``sign`` and, except for ``'weight'`` and ``'none'``, the normalizer. The one place
    the label rule is written: the losses and the symbol drop-in all look labels up here.

    Those two scalars multiply the (C,) weight table instead of the positions, and a
    negative ignore label gets a slot of 0 in the table instead of a mask, which leaves
    as few per-position nodes as possible.
    """
    in_table = _table_ignores(ignore_label)
    # The 0/1 mask of positions not ignored, built only where a mask zeroes them or
    # 'valid' counts them; a bad label may count either way, as its position is NaN.
    keep = None
    if ignore_label is not None and (not in_table or normalization == "valid"):
        # On large arrays MXNet's ">" against a scalar takes about half the time of "!=".
        keep = label > ignore_label if in_table else label != ignore_label
    table, offset = _weight_table(F, class_weight, pred, axis,
                                  ignore_label if in_table else None)
    scale = None if normalization in ("weight", "none") else _normalizer(
        F, normalization, keep, None, label)
    if scale is not None:
        table = F.broadcast_mul(table, scale if sign > 0 else scale * sign)
    elif sign < 0:
        table = table * sign
    # A mask points ignored positions at class 0, so 255 is never clipped into a class.
    index = label if keep is None or in_table else label * keep
    weight = F.take(table, _lookup_index(F, index, offset))
    if keep is not None and not in_table:
        weight = weight * keep
    return weight


def _moves_class_axis(axis, ndim):
    """Whether the graph for sparse labels transposes a strided class axis to the end."""
    return ndim is not None and ndim > 2 and axis % ndim != ndim - 1


def _lookup_index(F, label, offset):
    """Where to look ``label`` up in the weight table: ``label + offset``, or far past the
    end (clipped onto the trailing NaN) when ``label`` is not an integer, so that a label
    such as 1.5 poisons its position instead of being truncated into class 1."""
    index = label + offset
    fractional = index != F.floor(index)
    # 2**30: past any class count, and still a well-defined integer index to clip.
    # broadcast_add, not "+": on small arrays MXNet's elemwise_add costs five times as much.
    return F.broadcast_add(index, fractional * 2.0 ** 30)


def _safe_mean(F, values, **axes):
    """``F.mean(values, **axes)`` without overflowing the intermediate sum (exact scaling
    by a power of two), so a mean of losses near float32's largest value stays finite."""
    return F.mean(values * _MEAN_SCALE, **axes) * (1 / _MEAN_SCALE)


def _weigh(F, value, weight, value_sign=0):
    """``value * weight`` (broadcast), exactly 0 wherever ``weight`` is 0.

    A value can overflow to inf only where the logits spread wider than float32's range;
    there the product with a weight of 0 would be NaN. Bounding the value just inside
    float32's range first keeps that product 0 and lets NaN through, so a NaN weight (a
    bad label in a graph) or a NaN logit still poisons its position. A value known to
    be <= 0 (``value_sign=-1``) or >= 0 (``+1``) needs one bound, a scalar ``maximum`` or
    ``minimum``: MXNet runs those on one thread at small sizes, where ``clip`` starts a
    parallel region on every call, which costs tens of microseconds on a busy machine.
    """
    if value_sign < 0:
        value = F.maximum(value, -CLIP_MAX)
    elif value_sign > 0:
        value = F.minimum(value, CLIP_MAX)
    else:
        value = F.clip(value, -CLIP_MAX, CLIP_MAX)
    return F.broadcast_mul(value, weight)


def _focal(F, value, log_one_minus_p, gamma):
    r""":math:`(1 - p)^\gamma \cdot` ``value`` for ``value >= 0``; 0 where ``value <= 0``.

    With :math:`f = (1-p)^\gamma`, the gradient is :math:`f\,dv + v\,df`, and
    :math:`v\,df = \gamma\,v f\,d\log(1-p)`: formed in that order, :math:`\gamma v f`
    overflows once the loss passes float32's largest number over gamma (logits near
    3e38), and times a :math:`d\log(1-p)` of 0 gives NaN. So the term is formed as
    ``stop(f) * v + (f * stop(v') - stop(f * v'))``: the value is exactly :math:`f v` (the
    bracket is a number minus itself), and the gradient is :math:`f\,dv + v'\,df` with
    :math:`v'` equal to :math:`v` below float32's largest number over :math:`2\gamma` and
    capped there, which changes only gradients of losses above about 1e38. ``value`` is
    capped at float32's largest number (it is infinite only where the logits spread wider
    than float32's range).
    """
    capped = F.minimum(value, _FLOAT32_MAX)
    factor = F.exp(gamma * log_one_minus_p)
    bounded = F.BlockGrad(F.minimum(capped, _FLOAT32_MAX / (2 * max(gamma, 1.0))))
    product = F.BlockGrad(factor) * capped + (factor * bounded - F.BlockGrad(factor * bounded))
    return F.where(value > 0, product, F.zeros_like(product))


def _log_one_minus_prob(F, logits, log_prob, selected_logits, axis, keepdims):
    r""":math:`\log(1 - p)` for the selected classes, accurate for every finite input.

    ``log_prob`` and ``selected_logits`` are the selected classes' log-probabilities
    and logits (picked: shape of the positions; or all classes, with ``keepdims``).
    Where the selected class is the unique largest logit :math:`m` and :math:`p > 1/2`,
    :math:`1 - p = \sum_{c \ne m} p_c`, whose log is formed from the other logits
    alone, :math:`\mathrm{lse}_{c \ne m}(z_c) - \mathrm{lse}(z)` with
    :math:`\mathrm{lse}(z) = z_m - \log p_m`, so nothing cancels or underflows even
    when :math:`1 - p` is far below float32's smallest number (a logit gap of 1e4).
    Everywhere else :math:`p \le 1/2` and ``log1p(-exp(log p))`` is accurate. The
    branch is chosen from the logits, not from ``log p``: at a tie of the top logits
    ``log_softmax`` rounds :math:`\log \frac12` up, which would pick the first form
    for a class that is not the unique maximum (loss 0 and a zero gradient at
    ``[0, 0]``). Both forms are finite for every input, so neither sends NaN into the
    gradient.
    """
    top = F.max(logits, axis=axis, keepdims=True)
    is_top = F.broadcast_equal(logits, top)
    tops = F.sum(is_top, axis=axis, keepdims=True)
    # The logits with every maximum replaced by float32's lowest number; their
    # logsumexp is that of the classes other than the (unique) maximum.
    others = logits * (1 - is_top) - is_top * _FLOAT32_MAX
    second = F.BlockGrad(F.max(others, axis=axis, keepdims=True))
    spread = F.sum(F.exp(F.broadcast_sub(others, second)), axis=axis, keepdims=keepdims)
    if keepdims:
        unique_top = F.broadcast_mul(is_top, tops == 1)
    else:
        second, top, tops = (F.squeeze(a, axis=axis) for a in (second, top, tops))
        unique_top = (selected_logits == top) * (tops == 1)
    from_others = F.broadcast_sub(second + F.log(spread), selected_logits) + log_prob
    # Capped so that the branch not taken stays finite where p is near 1; below the cap
    # (p < 3/4) it is exact, and the branch taken always has p <= 1/2 up to rounding.
    from_own = F.log1p(-F.exp(F.minimum(log_prob, _LOG_THREE_QUARTERS)))
    use_others = F.BlockGrad(unique_top * (log_prob > _LOG_HALF))
    return F.where(use_others, from_others, from_own)


def _product(F, a, b):
    """Broadcast product of two optional label-side factors (None stands for 1)."""
    if a is None or b is None:
        return b if a is None else a
    return F.broadcast_mul(a, b)


def _normalizer(F, normalization, keep, weight, positions):
    r"""The label-side scale :math:`BP/Z` (a (1,) array), or None where it is 1.

    With :math:`P` positions per sample, :math:`\frac{B}{Z}\sum_{i\in b} l_i
    = \frac{BP}{Z}\,\mathrm{mean}_{i \in b}\, l_i`, and :math:`BP` is the number of
    label positions, so no batch size is needed inside the graph. Computed from labels
    and weights only, it adds no node to the backward pass.
    """
    if normalization == "batch":
        return None
    size = F.cast(F.size_array(positions), "float32")
    if normalization == "null":
        return size
    if normalization == "valid":
        if keep is None:
            return None
        return size / F.maximum(_sum_all(F, keep), 1.0)
    # 'weight'
    if weight is None:
        return None
    ones = F.ones_like(positions)
    # Magnitudes: a negative sample weight flips its position's sign without shrinking
    # the divisor (see the class docstring).
    total = _sum_all(F, F.abs(F.broadcast_mul(weight, ones)), ones)
    # A zero total means every position has weight 0, so the numerator is 0 too.
    return size / F.where(total > 0, total, F.ones_like(total))


class WeightedSoftmaxCELoss(PortableExport, SerializedFirstCall, Loss):
    r"""Softmax cross-entropy with class weights, an ignore label and a choice of normalization.

    For position :math:`i` with label :math:`y_i`, prediction :math:`z_i` and
    :math:`p_i = \mathrm{softmax}(z_i)` along ``axis``:

    .. math::

        l_i = -\,w_{y_i}\, s_i\, (1 - p_{i,y_i})^{\gamma}
              \Big[(1-\varepsilon)\log p_{i,y_i} + \frac{\varepsilon}{C}\sum_c \log p_{i,c}\Big]
              \quad\text{if } y_i \ne \text{ignore\_label}, \qquad l_i = 0 \text{ otherwise},

        L = \frac{1}{Z}\sum_i l_i,

    with :math:`w` = ``class_weight`` (all ones when None), :math:`s` =
    ``sample_weight``, :math:`\varepsilon` = ``label_smoothing`` and :math:`\gamma`
    = ``gamma``. :math:`Z` is chosen by ``normalization``:

    ======== ================================================ ==========================================
    value    :math:`Z`                                         reproduces
    ======== ================================================ ==========================================
    valid    :math:`\max(1, \#\{i: y_i \ne \text{ignore}\})`   ``SoftmaxOutput(normalization='valid')``,
                                                               Chainer ``normalize=True``
    batch    number of label positions, ignored ones included  gluon ``SoftmaxCrossEntropyLoss``
    weight   :math:`\sum_{i \text{ kept}} |w_{y_i} s_i|` (1 if 0) PyTorch ``CrossEntropyLoss(weight=w)``,
                                                               ``reduction='mean'``
    null     1                                                 a plain sum
    none     no reduction: the :math:`l_i` themselves          per-position losses for hard-example mining
    ======== ================================================ ==========================================

    The returned ``(batch,)`` vector holds :math:`\frac{B}{Z}\sum_{i \in b} l_i` for
    each sample :math:`b`, so its mean over the batch is :math:`L` and
    ``loss.backward(); trainer.step(batch_size)`` follows :math:`\nabla L`.
    The gradient is the analytic one: for plain CE,
    :math:`\partial L / \partial z_i = w_{y_i} s_i (p_i - \mathrm{onehot}(y_i)) / Z`.

    Label smoothing mixes the one-hot target with the uniform one and weights the
    *whole* position by :math:`w_{y_i}`. PyTorch instead weights each class term of
    the smoothed target by its own :math:`w_c`. With ``sparse_label=False`` the
    target is the given distribution :math:`t_i` and weights apply per class:
    :math:`l_i = -s_i \sum_c w_c t_{i,c} (1-p_{i,c})^\gamma \log p_{i,c}`, smoothed as
    :math:`(1-\varepsilon) t_i + \varepsilon / C`.

    ``gamma > 0`` is the softmax focal loss of Lin et al. (2017); ``gamma = 0`` is
    plain cross-entropy. The factor :math:`(1-p)^\gamma` is formed in the log domain
    from the logits, so it stays exact when :math:`1-p` is far below float32's range.
    Inputs of any float type are computed in float32.

    Edge behaviour (each promise is a test in ``tests/test_reliability.py``):

    * A position that carries no weight (ignored, class weight 0, sample weight 0,
      ``weight=0``) gives exactly 0 and a zero gradient, for every finite input.
    * Finite input never gives NaN. The loss is finite wherever its true value fits
      in float32 and the logits along ``axis`` spread less than float32's largest
      number; beyond that spread a weighted position may be inf. The gradient is
      finite wherever the loss is (with ``gamma > 1``, wherever gamma times the loss is).
    * Negative sample weights flip the sign of their positions; ``'weight'``
      normalization divides by the total weight *magnitude*, so the divisor stays
      positive.
    * ``ignore_label`` applies to sparse labels only; with ``sparse_label=False`` a
      position whose target row is all zeros contributes 0.
    * Inside a hybridized graph a bad label (outside ``[0, C)``, not an integer, and
      not ``ignore_label``) makes the loss NaN; imperatively it raises ``ValueError``.

    Parameters
    ----------
    class_weight : list, ndarray, NDArray or None, default None
        Length-C non-negative weights :math:`w_c` (not all zero). Stored as the
        non-trainable parameter ``class_weight``: saved by ``save_parameters``,
        baked into ``export()``, replaceable with :meth:`set_class_weight`.
    axis : int, default -1
        The class axis of ``pred``.
    sparse_label : bool, default True
        Labels are class indices (True) or per-class probabilities shaped like
        ``pred`` (False).
    from_logits : bool, default False
        ``pred`` already holds log-probabilities.
    ignore_label : int or None, default -1
        Label value whose positions get zero loss and zero gradient (-1 for
        GluonCV's unsampled proposals and for GluonCV's segmentation masks, which
        turn the files' 255 into -1). None ignores nothing. Sparse labels only: dense
        targets carry no label to ignore.
    normalization : {'valid', 'batch', 'weight', 'null', 'none'}, default 'valid'
        The divisor :math:`Z`, see the table above.
    label_smoothing : float in [0, 1), default 0
        :math:`\varepsilon`.
    gamma : float >= 0, default 0
        Focusing parameter of the focal loss.
    weight : float or None, default None
        Global scalar multiplied into the loss (Gluon's ``weight``).
    batch_axis : int, default 0
        The axis of the label that indexes samples.
    fused : bool or None, default None
        None runs the fused C++ operator (see ``docs/fused.md``) where it applies and
        falls back to the MXNet-operator graph elsewhere; False always uses the graph
        (an ``export()`` of built-in operators only); True raises a ValueError where the
        fused operator cannot run.

    Inputs
    ------
    - **pred**: ``(N, C)``, ``(B, N, C)`` with ``axis=-1``, ``(B, C, H, W)`` with
      ``axis=1``: any shape with the classes along ``axis``, at least 2-D and not
      empty. NumPy arrays and lists are accepted for every input and copied to
      NDArrays (on ``pred``'s context).
    - **label**: ``pred``'s shape without ``axis`` (that shape with ``axis`` kept as 1
      is accepted too); with ``sparse_label=False``, ``pred``'s shape.
    - **sample_weight** (optional): the label's shape, the label's shape with the class
      axis kept as 1 (gluon's convention, e.g. ``(B, N, 1)``), ``(batch,)``, anything
      with the label's number of dimensions that broadcasts to it, or anything gluon
      accepts that broadcasts to ``pred``'s shape with the class axis kept as 1
      (``(B, 1, 1, 1)`` for NCHW). A shape two of these readings place differently
      (``(4, 1)`` for labels ``(4, 4)``) raises ValueError. A hybridized loss takes it
      on every call or on none.

    Outputs
    -------
    - **loss**: ``(batch,)``; with ``normalization='none'``, the label's shape.

    Shape
    -----
    ``pred (*, C, *)``, ``label (*, *)`` -> ``(batch,)``.
    """

    def __init__(self, class_weight=None, axis=-1, sparse_label=True, from_logits=False,
                 ignore_label=-1, normalization="valid", label_smoothing=0.0, gamma=0.0,
                 weight=None, batch_axis=0, fused=None, **kwargs):
        weight = 1.0 if weight is None else check_float("weight", weight)
        super().__init__(weight, batch_axis, **kwargs)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ValueError("axis must be an integer, got %r" % (axis,))
        if isinstance(batch_axis, bool) or not isinstance(batch_axis, (int, np.integer)):
            raise ValueError("batch_axis must be an integer, got %r" % (batch_axis,))
        self._axis = int(axis)
        self._sparse_label = check_bool("sparse_label", sparse_label)
        self._from_logits = check_bool("from_logits", from_logits)
        self._ignore_label = check_ignore_label(ignore_label)
        self._normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self._label_smoothing = check_float("label_smoothing", label_smoothing, 0.0, 1.0,
                                            high_open=True)
        self._gamma = check_float("gamma", gamma, low=0.0)
        self._built_ndim = None
        self._built_single_class = False  # whether the graph was built for C = 1
        self._built_with_sample_weight = None
        self._num_classes = None
        if not any(fused is choice for choice in (None, True, False)):  # not 1 or 0
            raise ValueError("fused must be None, True or False, got %r" % (fused,))
        self._fused_wanted = fused
        self._fused_device = None  # the device type the current path was chosen for
        self._use_fused = False  # symbolic composition alone gets built-in operators
        self._graph_wraps_input = False  # whether the built graph takes pred via identity
        if class_weight is not None:
            weights = as_weight_vector("class_weight", class_weight)
            self._num_classes = weights.size
            self.class_weight = self.params.get(
                "class_weight", shape=weights.shape, grad_req="null",
                init=mx.init.Constant(weights), differentiable=False, lr_mult=0.0,
                wd_mult=0.0)
            # Initialized here so the loss needs no initialize() call, like gluon's losses.
            self.class_weight.initialize(ctx=mx.cpu())

    @property
    def num_classes(self):
        """C when class weights are set, else None (taken from ``pred`` at run time)."""
        return self._num_classes

    def set_class_weight(self, class_weight):
        """Replace the class weights in place, on every context; no re-hybridizing needed."""
        if self._num_classes is None:
            raise ValueError("set_class_weight needs a loss built with class_weight, "
                             "got one built with class_weight=None")
        weights = as_weight_vector("class_weight", class_weight, length=self._num_classes)
        self.class_weight.set_data(mx.nd.array(weights))

    def forward(self, pred, label, sample_weight=None):
        if isinstance(pred, mx.sym.Symbol):
            if self._use_fused:  # the fused operator cannot add to a gradient: see fused
                pred = fused.composed_input(pred)
            return super().forward(pred, label, sample_weight)
        weight_wants_grad = (sample_weight is not None and mx.autograd.is_recording()
                             and getattr(sample_weight, "grad", None) is not None)
        pred, label, sample_weight, context = self._prepare(pred, label, sample_weight)
        with self._calls_on(context):
            if context.device_type != self._fused_device:
                self._choose_path(context)
            if self._use_fused and weight_wants_grad:
                raise ValueError(
                    "sample_weight has a gradient buffer (attach_grad) and autograd is "
                    "recording, but the fused operator gives no gradient for "
                    "sample_weight: build the loss with fused=False to train the "
                    "weights, or pass sample_weight.detach()")
            if not is_hybridized(self):
                if self._use_fused:  # the fused operator cannot add to a gradient: see fused
                    pred = fused.gradient_input(pred)
                return super().forward(pred, label, sample_weight)
            if self._use_fused and mx.autograd.is_recording():
                # A leaf's gradient reaches it through an identity node of the graph,
                # whose backward honours grad_req='add' (see fused.composed_input); a
                # network's output, the usual pred, needs none, so the graph has one
                # only while leaves come in.
                leaf = fused.is_leaf(pred)
                if leaf != self._graph_wraps_input:
                    self._graph_wraps_input = leaf
                    clear_graph(self)
            return self._run_cached_graph(context, pred, label, sample_weight)

    def _choose_path(self, context):
        """Fused operator or MXNet-operator graph for calls on ``context``, logged once."""
        if self._fused_wanted is False:
            why = "fused=False"
        elif not self._sparse_label or self._from_logits or self._gamma > 0:
            why = "the fused operator has no dense labels, from_logits or focal loss"
        elif context.device_type not in ("cpu", "cpu_pinned", "cpu_shared"):
            why = "the fused operator has no kernel for %s" % (context,)
        elif not fused.available():
            why = fused.unavailable_reason()
        else:
            why = None
        if self._fused_wanted and why is not None:
            raise ValueError("fused=True but the fused operator cannot run: %s" % why)
        unrequested = why is not None and why == fused.unavailable_reason() and not (
            fused.disabled_by_environment())
        fused.log_path_once(why is None, why, unrequested)
        if self._use_fused != (why is None):
            clear_graph(self)  # a graph built for the other path
        self._use_fused = why is None
        self._fused_device = context.device_type

    def _prepare(self, pred, label, sample_weight):
        """NDArray-level checks and shape conventions, run before graph or imperative code:
        ``(pred, label, sample_weight, context)``.

        Each shape, dtype and context read is a call into the MXNet library, and at small
        sizes they cost as much as the loss itself, so each is read once per call, and the
        checks and reshapes that follow from the shapes alone are worked out once per
        combination of shapes. NumPy arrays and lists are copied to NDArrays on ``pred``'s
        context.
        """
        pred = as_ndarray("pred", pred)
        context = pred.context
        label = on_context("label", label, context)
        if sample_weight is not None:
            sample_weight = on_context("sample_weight", sample_weight, context)
        ndim, class_count, label_shape, weight_shape = shape_plan(
            pred.shape, label.shape, None if sample_weight is None else sample_weight.shape,
            self._axis, self._batch_axis, self._sparse_label, self._num_classes)
        if label_shape is not None:
            label = label.reshape(label_shape)
        if weight_shape is not None:
            sample_weight = sample_weight.reshape(weight_shape)
        built = bool(is_hybridized(self) and built_graph(self))
        if built and self._built_with_sample_weight != (sample_weight is not None):
            raise ValueError(
                "sample_weight was %s on the call that built this hybridized loss and is %s "
                "now; pass sample_weight on every call or on none (ones weigh nothing), or "
                "call hybridize() again" % (("given", "None") if self._built_with_sample_weight
                                            else ("None", "given")))
        if not is_hybridized(self):
            if self._sparse_label:
                check_labels(label, class_count, self._ignore_label)
        elif built and self._graph_depends_on(ndim):
            raise ValueError("pred has %d dimensions but this hybridized loss was built for %d;"
                             " call hybridize() again" % (ndim, self._built_ndim))
        if built and (class_count == 1) != self._built_single_class:
            clear_graph(self)  # C = 1 has a graph of its own (see weighted_softmax_ce)
            built = False
        if not built:
            self._built_ndim = ndim
            self._built_single_class = class_count == 1
            self._built_with_sample_weight = sample_weight is not None
        # Computing in float32 keeps float16 inputs from overflowing in the softmax.
        if pred.dtype != np.float32:
            pred = pred.astype(np.float32)
        if label.dtype != np.float32:
            label = label.astype(np.float32)
        if sample_weight is not None and sample_weight.dtype != np.float32:
            sample_weight = sample_weight.astype(np.float32)
        if self._num_classes is not None:
            ensure_on_context(self.class_weight, context)
        return pred, label, sample_weight, context

    def _graph_depends_on(self, ndim):
        """Whether a graph built for ``self._built_ndim`` dimensions is wrong for ``ndim``.

        Two things bake the number of dimensions into the graph: 1-D labels skip the
        per-sample mean, and dense labels with class weights along a non-negative axis
        need it to lay the weights along that axis.
        """
        if ndim == self._built_ndim:
            return False
        if (ndim == 2) != (self._built_ndim == 2):
            return True
        if self._sparse_label and not self._use_fused and (
                _moves_class_axis(self._axis, ndim) or _moves_class_axis(self._axis, self._built_ndim)):
            return True
        return not self._sparse_label and self._num_classes is not None and self._axis >= 0

    def hybrid_forward(self, F, pred, label, sample_weight=None, class_weight=None):
        return self._scaled_loss(F, pred, label, sample_weight, class_weight, self._weight)

    def _scaled_loss(self, F, pred, label, sample_weight, class_weight, scale):
        """This loss's settings applied to ``pred``, times ``scale``: the fused operator
        when :meth:`_choose_path` picked it, else the MXNet-operator graph."""
        if class_weight is not None and F is mx.nd:
            class_weight = class_weight.detach()  # a handle per call: see mxnet_internals.py
        if self._use_fused:
            if F is mx.sym and self._graph_wraps_input:
                pred = fused.composed_input(pred)
            return fused.softmax_ce(
                F, pred, detached_label(F, label), class_weight, sample_weight, axis=self._axis,
                ignore_label=self._ignore_label, normalization=self._normalization,
                label_smoothing=self._label_smoothing, batch_axis=self._batch_axis,
                scale=scale)
        loss = weighted_softmax_ce(
            F, pred, label, class_weight=class_weight, sample_weight=sample_weight,
            axis=self._axis, sparse_label=self._sparse_label, from_logits=self._from_logits,
            ignore_label=self._ignore_label, normalization=self._normalization,
            label_smoothing=self._label_smoothing, gamma=self._gamma,
            batch_axis=self._batch_axis, ndim=self._built_ndim,
            num_classes=1 if self._built_single_class else None)
        return apply_scalar_weight(F, loss, scale)

    def __repr__(self):
        return ("{name}(num_classes={nc}, axis={axis}, ignore_label={ig}, normalization={norm!r}, "
                "label_smoothing={eps}, gamma={gamma})").format(
                    name=type(self).__name__, nc=self._num_classes, axis=self._axis,
                    ig=self._ignore_label, norm=self._normalization, eps=self._label_smoothing,
                    gamma=self._gamma)
