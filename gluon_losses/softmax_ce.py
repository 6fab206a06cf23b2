r"""Class-weighted softmax cross-entropy with an ignore label.

:func:`weighted_softmax_ce` is the functional core, written once for both
``F=mx.nd`` and ``F=mx.sym``; :class:`WeightedSoftmaxCELoss` is the thin Gluon
``Loss`` over it that owns the class weights as a saved, exported parameter and
checks its inputs.
"""
import numpy as np
import mxnet as mx
from mxnet.gluon.loss import Loss

from .checks import (as_weight_vector, check_choice, check_float, check_ignore_label,
                     check_labels, check_shape)
from .first_call import SerializedFirstCall
from .graph_ops import apply_scalar_weight, detached_label, ensure_on_context
from . import fused

__all__ = ["WeightedSoftmaxCELoss", "weighted_softmax_ce", "NORMALIZATIONS"]

NORMALIZATIONS = ("valid", "batch", "weight", "null", "none")

# (1 - p_t) below this is treated as 0 by the focal factor. Its log is finite in
# float32, so the factor's gradient never forms inf * 0 when p_t rounds to 1.
_FOCAL_FLOOR = 1e-30


def _class_axis_shape(axis, ndim):
    """Reshape spec that lays a (C,) vector along ``axis`` of an ``ndim``-D array."""
    if axis >= 0 and ndim is None:
        raise ValueError("dense labels with class weights and axis=%d need pred's number of "
                         "dimensions; call the loss once with NDArrays, or use a negative "
                         "axis, got ndim=None" % axis)
    trailing = -axis - 1 if axis < 0 else ndim - axis - 1
    return (-1,) + (1,) * trailing


def _layout_hint(pred_shape, num_classes):
    """Where the classes seem to lie when they are not along ``axis``, as a message tail."""
    ndim = len(pred_shape)
    axes = [a for a in range(ndim) if pred_shape[a] == num_classes]
    if not axes:
        return ""
    others = {2: ["N"], 3: ["B", "N"], 4: ["B", "H", "W"], 5: ["B", "D", "H", "W"]}.get(
        ndim, ["d%d" % a for a in range(ndim - 1)])
    axis = axes[-1]
    layout = list(others)
    layout.insert(axis, "C")
    return ("; pred looks laid out as (%s), with the classes along axis %d: pass axis=%d"
            % (", ".join(layout), axis, -1 if axis == ndim - 1 else axis))


def _guarded_class_weight(F, class_weight, pred, axis):
    """The class weights (ones when None) with a NaN entry on each side.

    Looking a label up at ``label + 1`` in this vector, with take's clipping, gives
    NaN for any label below 0 or at or above C. That one lookup both weights the
    position and poisons an out-of-range label, so a bad label turns the loss NaN in
    a graph without a separate range test and reduction.
    """
    if class_weight is None:
        class_weight = F.ones_like(F.contrib.arange_like(pred, axis=axis))
    nan = F.slice_axis(class_weight, axis=0, begin=0, end=1) * float("nan")
    return F.concat(nan, class_weight, nan, dim=0)


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
                        ndim=None):
    r"""Weighted softmax cross-entropy for ``F`` in (``mx.nd``, ``mx.sym``).

    See :class:`WeightedSoftmaxCELoss` for the math and the meaning of every
    argument. ``pred`` and ``label`` are float32; ``class_weight`` is a ``(C,)``
    array or None. ``ndim`` is ``pred.ndim`` when known: it lets 1-D labels skip a
    per-sample reduction, and dense labels with class weights need it to lay the
    weights along a non-negative ``axis``.

    Returns ``(batch,)`` for every normalization but ``'none'``, which returns the
    per-position losses (shaped like ``label``; for dense labels, ``pred`` without
    ``axis``).
    """
    if sparse_label and _moves_class_axis(axis, ndim):
        # log_softmax along a strided axis (NCHW) costs about twice a transpose followed
        # by log_softmax along the last axis; the label's positions keep their order.
        pred = F.transpose(pred, axes=[d for d in range(ndim) if d != axis % ndim] + [axis % ndim])
        axis = -1
    log_prob = pred if from_logits else F.log_softmax(pred, axis=axis)
    label = detached_label(F, label)
    if class_weight is not None:
        # Constants in every graph: run by Module or a SymbolBlock, the weights would
        # otherwise get a gradient, NaN from the padding of the guarded lookup.
        class_weight = F.BlockGrad(class_weight)
    sign = 1.0
    if sparse_label:
        keep = None if ignore_label is None else label != ignore_label
        # Ignored positions are pointed at class 0 before pick/take, so -1 or 255 is
        # never clipped into a real class; their weight of 0 removes them afterwards.
        index = label if keep is None else label * keep
        target_log_prob = F.pick(log_prob, index, axis=axis)
        if label_smoothing == 0 and gamma == 0:
            # The minus sign goes into the label-side factor: one fewer backward node.
            value, sign = target_log_prob, -1.0
        else:
            value = -target_log_prob
            if label_smoothing > 0:
                value = (1 - label_smoothing) * value - label_smoothing * F.mean(log_prob,
                                                                                 axis=axis)
            if gamma > 0:
                value = _focal_factor(F, target_log_prob, gamma) * value
        position_weight = F.take(_guarded_class_weight(F, class_weight, pred, axis), index + 1)
        if keep is not None:
            position_weight = position_weight * keep
        positions = label
    else:
        if class_weight is not None:
            class_weight = F.reshape(class_weight, shape=_class_axis_shape(axis, ndim))
        target = label
        if label_smoothing > 0:
            target = (1 - label_smoothing) * target + label_smoothing * F.softmax(
                F.zeros_like(log_prob), axis=axis)
        per_class = target * log_prob
        if gamma > 0:
            per_class = per_class * _focal_factor(F, log_prob, gamma)
        if class_weight is not None:
            per_class = F.broadcast_mul(per_class, class_weight)
        value = -F.sum(per_class, axis=axis)
        keep = position_weight = None
        # A label-side array shaped like the positions (pred without the class axis).
        positions = F.sum(F.slice_axis(label, axis=axis, begin=0, end=1), axis=axis)
    weight = _product(F, position_weight, sample_weight)
    if normalization != "none":
        weight = _product(F, weight, _normalizer(F, normalization, keep, weight, positions))
    if sign < 0:
        weight = -weight  # sparse labels always have a position weight
    loss = value if weight is None else F.broadcast_mul(value, weight)
    if normalization == "none" or ndim == 2:
        return loss  # with 1-D labels every position is a sample
    return F.mean(loss, axis=batch_axis, exclude=True)


def _moves_class_axis(axis, ndim):
    """Whether the graph for sparse labels transposes a strided class axis to the end."""
    return ndim is not None and ndim > 2 and axis % ndim != ndim - 1


def _focal_factor(F, log_prob, gamma):
    r""":math:`(1 - p)^\gamma`, from log-probabilities, finite in value and gradient."""
    one_minus_p = F.maximum(-F.expm1(log_prob), _FOCAL_FLOOR)
    return F.exp(gamma * F.log(one_minus_p))


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
    total = _sum_all(F, F.broadcast_mul(weight, ones), ones)
    # A zero total means every position has weight 0, so the numerator is 0 too.
    return size / F.where(total > 0, total, F.ones_like(total))


class WeightedSoftmaxCELoss(SerializedFirstCall, Loss):
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
    weight   :math:`\sum_{i \text{ kept}} w_{y_i} s_i` (1 if 0)  PyTorch ``CrossEntropyLoss(weight=w)``,
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
    plain cross-entropy. Inputs of any float type are computed in float32.

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
        turn the files' 255 into -1). None ignores nothing.
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
      ``axis=1``: any shape with the classes along ``axis``.
    - **label**: ``pred``'s shape without ``axis`` (that shape with ``axis`` kept as 1
      is accepted too); with ``sparse_label=False``, ``pred``'s shape.
    - **sample_weight** (optional): the label's shape, the label's shape with the class
      axis kept as 1 (gluon's convention, e.g. ``(B, N, 1)``), ``(batch,)``, or
      anything with the label's number of dimensions that broadcasts to it.

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
        self._sparse_label = bool(sparse_label)
        self._from_logits = bool(from_logits)
        self._ignore_label = check_ignore_label(ignore_label)
        self._normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self._label_smoothing = check_float("label_smoothing", label_smoothing, 0.0, 1.0,
                                            high_open=True)
        self._gamma = check_float("gamma", gamma, low=0.0)
        self._built_ndim = None
        self._num_classes = None
        if fused not in (None, True, False):
            raise ValueError("fused must be None, True or False, got %r" % (fused,))
        self._fused_wanted = fused
        self._fused_device = None  # the device type the current path was chosen for
        self._use_fused = False  # symbolic composition alone gets built-in operators
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
        if isinstance(pred, mx.nd.NDArray):
            pred, label, sample_weight = self._prepare(pred, label, sample_weight)
            context = pred.context
            if context.device_type != self._fused_device:
                self._choose_path(context)
        return super().forward(pred, label, sample_weight)

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
        fused.log_path_once(why is None, why)
        if self._use_fused != (why is None):
            self._clear_cached_op()  # a graph built for the other path
        self._use_fused = why is None
        self._fused_device = context.device_type

    def _prepare(self, pred, label, sample_weight):
        """NDArray-level checks and shape conventions, run before graph or imperative code.

        Every shape, dtype and context is read once: each read is a call into the
        MXNet library, and at small sizes they cost as much as the loss itself.
        """
        pred_shape, label_shape = pred.shape, label.shape
        ndim = len(pred_shape)
        if not -ndim <= self._axis < ndim:
            raise ValueError("axis=%d is out of range for pred of shape %s" % (self._axis, pred_shape))
        axis = self._axis % ndim
        class_count = pred_shape[axis]
        if self._num_classes is not None and class_count != self._num_classes:
            raise ValueError("pred has %d classes along axis %d (shape %s) but class_weight has "
                             "length %d%s" % (class_count, self._axis, pred_shape,
                                              self._num_classes,
                                              _layout_hint(pred_shape, self._num_classes)))
        position_shape = pred_shape[:axis] + pred_shape[axis + 1:]
        kept_axis_shape = pred_shape[:axis] + (1,) + pred_shape[axis + 1:]
        if self._sparse_label:
            if label_shape != position_shape and label_shape == kept_axis_shape:
                label = label.reshape(position_shape)
                label_shape = position_shape
            check_shape("label", label_shape, position_shape, "pred of shape %s" % (pred_shape,))
        else:
            check_shape("label", label_shape, pred_shape, "pred (sparse_label=False)")
        if sample_weight is not None:
            sample_weight = self._broadcastable_sample_weight(sample_weight, position_shape,
                                                              kept_axis_shape)
        built = bool(self._active and self._cached_graph)
        if not self._active:
            if self._sparse_label:
                check_labels(label, class_count, self._ignore_label)
        elif built and self._graph_depends_on(ndim):
            raise ValueError("pred has %d dimensions but this hybridized loss was built for %d;"
                             " call hybridize() again" % (ndim, self._built_ndim))
        if not built:
            self._built_ndim = ndim
        # Computing in float32 keeps float16 inputs from overflowing in the softmax.
        if pred.dtype != np.float32:
            pred = pred.astype(np.float32)
        if label.dtype != np.float32:
            label = label.astype(np.float32)
        if sample_weight is not None and sample_weight.dtype != np.float32:
            sample_weight = sample_weight.astype(np.float32)
        if self._num_classes is not None:
            ensure_on_context(self.class_weight, pred.context)
        return pred, label, sample_weight

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

    def _broadcastable_sample_weight(self, sample_weight, position_shape, kept_axis_shape):
        shape = sample_weight.shape
        if shape == kept_axis_shape and shape != position_shape:
            return sample_weight.reshape(position_shape)
        if len(position_shape) > 1 and shape == (position_shape[self._batch_axis],):
            spec = [1] * len(position_shape)
            spec[self._batch_axis] = shape[0]
            return sample_weight.reshape(tuple(spec))
        broadcasts = len(shape) == len(position_shape) and all(
            s in (1, p) for s, p in zip(shape, position_shape))
        if not broadcasts:
            raise ValueError("sample_weight has shape %s, which does not broadcast to the "
                             "label's shape %s" % (shape, position_shape))
        return sample_weight

    def hybrid_forward(self, F, pred, label, sample_weight=None, class_weight=None):
        if self._use_fused:
            return fused.softmax_ce(
                F, pred, detached_label(F, label), class_weight, sample_weight, axis=self._axis,
                ignore_label=self._ignore_label, normalization=self._normalization,
                label_smoothing=self._label_smoothing, batch_axis=self._batch_axis,
                scale=self._weight)
        loss = weighted_softmax_ce(
            F, pred, label, class_weight=class_weight, sample_weight=sample_weight,
            axis=self._axis, sparse_label=self._sparse_label, from_logits=self._from_logits,
            ignore_label=self._ignore_label, normalization=self._normalization,
            label_smoothing=self._label_smoothing, gamma=self._gamma,
            batch_axis=self._batch_axis, ndim=self._built_ndim)
        return apply_scalar_weight(loss, self._weight)

    def __repr__(self):
        return ("{name}(num_classes={nc}, axis={axis}, ignore_label={ig}, normalization={norm!r}, "
                "label_smoothing={eps}, gamma={gamma})").format(
                    name=type(self).__name__, nc=self._num_classes, axis=self._axis,
                    ig=self._ignore_label, norm=self._normalization, eps=self._label_smoothing,
                    gamma=self._gamma)
