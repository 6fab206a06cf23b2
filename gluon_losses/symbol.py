r"""The package's losses for ``mx.sym`` graphs trained with ``mx.mod.Module``.

* :func:`weighted_softmax_output`: a class-weighted drop-in for
  ``mx.sym.SoftmaxOutput``: it returns the probabilities and back-propagates the
  weighted cross-entropy gradient, whatever the head gradient.
* :class:`WeightedCrossEntropy`: an ``mx.metric`` that logs the weighted loss value
  from those probabilities.
* :func:`center_loss` and :func:`with_center_update`: the center loss as a loss
  layer, and an optimizer that moves its centers by Eq. 4 of Wen et al. (ECCV 2016)
  under any kvstore.

Class weights are constants of the graph: their values sit in the attributes of its
nodes (:func:`graph_constant`), so they are saved in the symbol JSON and nothing that
sets or trains parameters can reach them.
"""
import itertools
import json

import numpy as np
import mxnet as mx

from .center import center_loss as _center_loss_graph
from .center_optimizer import (CENTER_STATE_SUFFIX, apply_center_state_update,
                               center_state_name, with_center_update)
from .checks import (as_weight_vector, check_center_loss_args, check_choice, check_float,
                     check_ignore_label)
from .graph_ops import detached_label
from .softmax_ce import position_weights, weighted_softmax_ce

__all__ = ["weighted_softmax_output", "WeightedCrossEntropy", "center_loss",
           "with_center_update", "center_state_name", "apply_center_state_update",
           "graph_constant", "inference_graph", "CENTER_STATE_SUFFIX", "CONSTANT_MAX"]

SOFTMAX_OUTPUT_NORMALIZATIONS = ("valid", "batch", "null")

# Marks the node that applies the weights and the SoftmaxOutput after it, for
# inference_graph.
_WEIGHTING_ATTR = "__gluon_losses_weighting__"

# Every float32 value up to this is stored exactly by graph_constant.
CONSTANT_MAX = float(np.finfo(np.float32).max)


def graph_constant(values, like, name=None):
    r"""A ``(L,)`` symbol of ``like``'s dtype whose values are stored in the graph itself.

    MXNet 1.9 has no operator that holds an array constant, so each run of equal values
    is one ``_mul_scalar`` node on a ones of shape ``(1,)`` (then ``tile`` for a run
    longer than 1), and the runs are concatenated. The ``scalar`` attribute keeps a
    float32 value exactly through ``tojson``/``load_json``, so a saved checkpoint
    restores the same constants; the node has no variable input for ``init_params``,
    ``set_params`` or an optimizer to change; and ONNX exports every node of it. The
    ones are cut from ``like`` (any symbol with at least one element), so the constant
    takes its dtype at bind time: float16 when the graph runs in float16.

    Parameters
    ----------
    values : sequence of float
        Finite values of magnitude at most ``CONSTANT_MAX`` (float32's largest).
    like : Symbol
        Gives the dtype.
    name : str or None
        Name of the last node (its output is ``<name>_output``).
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(array) | (np.abs(array) > CONSTANT_MAX))
    if array.size == 0 or bad.size:
        raise ValueError("values must be a non-empty sequence of finite numbers of magnitude "
                         "<= %.8g, got %r" % (CONSTANT_MAX, array[bad[0]] if bad.size
                                              else values))
    one = mx.sym.ones_like(mx.sym.slice(mx.sym.reshape(like, shape=(-1,)), begin=(0,),
                                        end=(1,)))
    runs = []
    # float32 -> exact Python floats, whose repr reads back as the same float32.
    for value, run in itertools.groupby(array.astype(np.float32).tolist()):
        length = len(list(run))
        constant = one * value
        runs.append(mx.sym.tile(constant, reps=(length,)) if length > 1 else constant)
    return mx.sym.concat(*runs, dim=0, name=name)


def _position_weights(data, label, class_weight, ignore, name):
    r"""Per-position :math:`w_{y_i}`: 0 where a label is ignored, NaN where it is bad.

    ``label`` is shaped like ``data`` with a class axis of 1. The label rule and the
    table are the Gluon loss's (:func:`gluon_losses.softmax_ce.position_weights`); here
    the table is a graph constant, passed through a ``reshape_like`` against the class
    axis of ``data``, so that a wrong length fails at bind, naming
    ``<name>_class_weight_check``.
    """
    if ignore is not None and ignore != -1:
        # Move the ignore label onto the table's slot for -1, and a real -1 below the
        # table, where it is bad: a lookup keeps the weights in data's dtype (float16),
        # which a mask computed from the float32 label would not.
        ignored, minus_one = label == float(ignore), label == -1.0
        label = label * (1.0 - ignored) - ignored - minus_one
        ignore = -1
    table = None
    if class_weight is not None:
        table = mx.sym.reshape_like(
            graph_constant(class_weight, data, name=None if name is None else
                           name + "_class_weight"),
            mx.sym.contrib.arange_like(data, axis=1),
            name=None if name is None else name + "_class_weight_check")
    return position_weights(mx.sym, label, table, data, axis=1, ignore_label=ignore)


def weighted_softmax_output(data, label, class_weight=None, ignore_label=-1, use_ignore=True,
                            normalization="valid", multi_output=False, grad_scale=1.0,
                            name=None):
    r"""Class-weighted drop-in for ``mx.sym.SoftmaxOutput``.

    Forward returns :math:`p = \mathrm{softmax}(z)` along axis 1, shaped like
    ``data``: ``SoftmaxOutput``'s own output, bitwise, so ``mx.metric.Accuracy``,
    metrics reading ``preds[0]`` and ``mod.predict`` work unchanged, and the output
    is named ``<name>_output`` as ``SoftmaxOutput``'s. Backward ignores the head
    gradient and gives the gradient of the weighted cross-entropy,

    .. math::

        \frac{\partial L}{\partial z_i} = \frac{s}{Z}\, w_{y_i}\,
            \big(p_i - \mathrm{onehot}(y_i)\big)
        \quad (0 \text{ where } y_i = \text{ignore\_label}),

    with :math:`s` = ``grad_scale``, :math:`w` = ``class_weight`` (ones when None)
    and :math:`Z` exactly as ``SoftmaxOutput`` divides, since it is
    ``SoftmaxOutput`` that computes it:

    ============== ============================== =====================================
    normalization  ``multi_output=False``          ``multi_output=True``
    ============== ============================== =====================================
    valid          max(1, #non-ignored labels)     max(1, #non-ignored labels)
    batch          N                               B x positions per sample
    null           1                               positions per sample
    ============== ============================== =====================================

    The weights enter through ``z' = BlockGrad(z) + (z - BlockGrad(z)) w_y``: the
    value of ``z`` exactly, the gradient scaled per position by :math:`w_{y_i}`.
    A label outside ``[0, C)`` that is not ignored makes that position's output (and
    gradient) NaN. Non-integer labels are truncated, as ``SoftmaxOutput`` does. The
    loss value itself is not an output; log it with :class:`WeightedCrossEntropy`.

    Defaults differ from ``SoftmaxOutput``'s (``use_ignore=False``,
    ``normalization='null'``): pass them explicitly when replacing a call that
    relied on those.

    Parameters
    ----------
    data : Symbol
        Scores: ``(N, C)``, or with ``multi_output=True`` ``(B, C, d1, ...)``.
    label : Symbol
        Class ids: ``(N,)``, or ``(B, d1, ...)`` (also accepted flattened,
        ``(B, d1 * ...)``).
    class_weight : list or ndarray of C non-negative floats, or None
        :math:`w`, stored in the graph as a constant (see :func:`graph_constant`),
        so it is saved with the symbol and no optimizer or ``set_params`` reaches it.
        A length other than C fails when the graph is bound, naming the node
        ``<name>_class_weight_check``.
    ignore_label : int, default -1
        Label whose positions get no gradient when ``use_ignore`` is True.
    use_ignore : bool, default True
        False: no label is ignored, so ``ignore_label`` is a bad label (NaN).
    normalization : {'valid', 'batch', 'null'}, default 'valid'
        :math:`Z`, see the table.
    multi_output : bool, default False
        One softmax per position of axes 2, 3, ... (detection heads, segmentation).
    grad_scale : float, default 1
        :math:`s`.
    name : str or None
        Name of the ``SoftmaxOutput`` node.

    Returns
    -------
    Symbol
        The probabilities, ``data``'s shape.
    """
    normalization = check_choice("normalization", normalization, SOFTMAX_OUTPUT_NORMALIZATIONS)
    grad_scale = check_float("grad_scale", grad_scale)
    ignore = check_ignore_label(ignore_label) if use_ignore else None
    weights = None
    if class_weight is not None:
        weights = as_weight_vector("class_weight", class_weight)
    # float32 whatever the graph's dtype: the label is an index, exact in float32, and a
    # Cast gives take an index type even where nothing binds a label (inference).
    # SoftmaxOutput reads the label itself, and so gives it data's dtype and shape where
    # nothing else does.
    index_label = mx.sym.Cast(detached_label(mx.sym, label), dtype="float32")
    # Scores as (N, C) or (B, C, P), labels as (N, 1) or (B, 1, P): reshape, unlike
    # reshape_like, waits for a label shape that only SoftmaxOutput infers (inference).
    if multi_output:
        scores = mx.sym.reshape(data, shape=(0, 0, -1))
        label_positions = mx.sym.reshape(index_label, shape=(0, 1, -1))
    else:
        scores, label_positions = data, mx.sym.expand_dims(index_label, axis=1)
    position_weight = _position_weights(scores, label_positions, weights, ignore, name)
    # broadcast_axis with a known size is many times faster than broadcast_like on CPU.
    if weights is None:
        position_weight = mx.sym.broadcast_like(position_weight, scores)
    else:
        position_weight = mx.sym.broadcast_axis(position_weight, axis=1, size=weights.size)
    # The value of the scores, exactly (s - s is 0); their gradient times w_y, and
    # 0 * NaN = NaN where a label is bad.
    fixed = mx.sym.BlockGrad(scores)
    weighted = mx.sym.elemwise_add(fixed, (scores - fixed) * position_weight,
                                   attr={_WEIGHTING_ATTR: "1"})
    if multi_output:
        # back to data's layout, so that SoftmaxOutput's own output, named after it,
        # is the result, and SoftmaxOutput takes every label layout it accepts
        weighted = mx.sym.reshape_like(weighted, data)
    return mx.sym.SoftmaxOutput(
        weighted, label, grad_scale=grad_scale, ignore_label=-1 if ignore is None else ignore,
        use_ignore=ignore is not None, normalization=normalization,
        multi_output=multi_output, name=name, attr={_WEIGHTING_ATTR: "1"})


def inference_graph(symbol):
    r"""``symbol`` with each :func:`weighted_softmax_output` replaced by the
    ``softmax`` along axis 1 of its scores, under the same name: the graph that a host
    which only predicts needs, without labels, and what ``mx.onnx.export_model``
    converts.

    Its outputs equal the training graph's forward outputs (``SoftmaxOutput`` computes
    this softmax; the weighting changes only the gradient). MXNet 1.9.1's ONNX export
    cannot convert the training graph, nor a stock net that ends in ``SoftmaxOutput``
    with the opset of any ``onnx`` that installs on Python 3.11: its converter looks up
    the label it has skipped.
    """
    graph = json.loads(symbol.tojson())
    nodes = graph["nodes"]

    def skip_weighting(entry):
        # the weighting's first input is BlockGrad(scores), whose value it has
        node = nodes[entry[0]]
        return node["inputs"][0] if node.get("attrs", {}).get(_WEIGHTING_ATTR) else entry

    for node in nodes:
        node["inputs"] = [skip_weighting(entry) for entry in node["inputs"]]
        if node["op"] == "SoftmaxOutput" and node.get("attrs", {}).get(_WEIGHTING_ATTR):
            node.update(op="softmax", attrs={"axis": "1"}, inputs=node["inputs"][:1])
    # load_json keeps what the outputs reach: the weighting and the labels go.
    return mx.sym.load_json(json.dumps(graph))


class WeightedCrossEntropy(mx.metric.EvalMetric):
    r"""Metric: the class-weighted cross-entropy of predicted probabilities.

    .. math::

        \frac{\sum_i w_{y_i} \big(-\log(p_{i,y_i} + \epsilon)\big)}{\#\{i: y_i \ne \text{ignore}\}}

    summed over every batch since the last ``reset``, the ``'valid'``-normalized
    value that :func:`weighted_softmax_output` trains (``Module`` metrics see the
    probabilities, not the loss). Computed by the package's loss core on
    :math:`\log(p + \epsilon)`, :math:`\epsilon` as in ``mx.metric.CrossEntropy``.

    Parameters
    ----------
    class_weight : list, ndarray or None
        :math:`w`, as given to :func:`weighted_softmax_output`.
    ignore_label : int or None, default -1
    eps : float, default 1e-12
    name, output_names, label_names :
        As for ``mx.metric.EvalMetric``.

    Inputs (``update``)
    -------------------
    - **labels**: list of ``(N,)`` or ``(B, d1, ...)`` class ids.
    - **preds**: list of probabilities ``(N, C)`` or ``(B, C, d1, ...)``; extra
      predictions (e.g. a center-loss output) are skipped.
    """

    def __init__(self, class_weight=None, ignore_label=-1, eps=1e-12, name="weighted-ce",
                 output_names=None, label_names=None):
        super().__init__(name, output_names=output_names, label_names=label_names)
        self._weights = None if class_weight is None else mx.nd.array(
            as_weight_vector("class_weight", class_weight))
        self._ignore_label = check_ignore_label(ignore_label)
        self._eps = check_float("eps", eps, 0.0)

    def update(self, labels, preds):
        for label, pred in zip(labels, preds):
            label = label.reshape(pred.shape[:1] + pred.shape[2:]).astype(np.float32)
            weights = None if self._weights is None else self._weights.as_in_context(
                pred.context)
            losses = weighted_softmax_ce(mx.nd, mx.nd.log(pred + self._eps), label,
                                         class_weight=weights, axis=1, from_logits=True,
                                         ignore_label=self._ignore_label,
                                         normalization="none")
            values = label.asnumpy()
            kept = values.size if self._ignore_label is None else int(
                (values != self._ignore_label).sum())
            total = float(losses.sum().asscalar())
            self.sum_metric += total
            self.global_sum_metric += total
            self.num_inst += kept
            self.global_num_inst += kept


def center_loss(data, label, num_classes, feature_dim, alpha=0.5, weight=1.0, ignore_label=None,
                name="center"):
    r"""Center loss of Wen et al. (ECCV 2016) as a loss layer of a ``Module`` graph.

    .. math::

        L_i = \frac{\lambda}{2}\lVert x_i - c_{y_i}\rVert^2, \qquad
        c_j \leftarrow c_j - \alpha\,\frac{\sum_{i: y_i=j}(c_j - x_i)}{1 + n_j}
        \text{ (Eq. 4, by the optimizer of } :func:`with_center_update`\text{)}.

    Group it with the classifier, e.g. ``mx.sym.Group([mx.sym.SoftmaxOutput(logits,
    label), center_loss(features, label, 10, 2)])``. Its gradient into ``data`` is
    :math:`\lambda (x_i - c_{y_i})` per sample, summed like ``SoftmaxOutput``'s with
    ``normalization='null'``, so Module's ``rescale_grad = 1/batch_size`` averages
    both terms alike.

    The layer creates one variable, :func:`center_state_name` ``(name)``
    (``'center_state'`` for the default name), of shape ``(K, D, 2)``: ``[..., 0]``
    holds the centers (zeros at start) and ``[..., 1]`` the number of samples that
    have updated each center, repeated along D. Its gradient carries
    :math:`\alpha \sum_{i: y_i=j}(c_j - x_i)` in ``[..., 0]`` and :math:`n_j` in
    ``[..., 1]``; being a gradient, the kvstore sums both over devices and workers, so
    the one update that :func:`with_center_update` makes sees the whole batch. Every
    element of the state updates from its own gradient and count, so it needs no
    shape, which a parameter server's flat copy does not have. The variable carries
    ``lr_mult=0``, ``wd_mult=0``: an optimizer without the center update leaves it
    alone.

    Parameters
    ----------
    data : Symbol
        Features ``(B, D)``.
    label : Symbol
        ``(B,)`` class ids in ``[0, K)``, or ``ignore_label``. Others give NaN.
    num_classes : int
        K.
    feature_dim : int
        D.
    alpha : float in (0, 1], default 0.5
        Center learning rate of Eq. 4.
    weight : float >= 0, default 1
        :math:`\lambda`: scales the value and the feature gradient, not the centers.
    ignore_label : int or None, default None
        Samples with this label give zero loss and move no center.
    name : str, default 'center'
        Name of the output node; the state variable is named after it.

    Returns
    -------
    Symbol
        ``(B,)`` per-sample losses (a ``MakeLoss`` output).
    """
    num_classes, feature_dim, alpha, weight, ignore_label = check_center_loss_args(
        num_classes, feature_dim, alpha, weight, ignore_label)
    state = mx.sym.var(center_state_name(name), shape=(num_classes, feature_dim, 2),
                       init=mx.init.Zero(), lr_mult=0.0, wd_mult=0.0)
    centers = mx.sym.reshape(mx.sym.slice_axis(state, axis=2, begin=0, end=1),
                             shape=(num_classes, feature_dim))
    if alpha != 1.0:
        # Value c exactly (c - c is 0), gradient alpha x that of c: alpha travels in
        # the gradient, and the update needs no per-loss setting.
        fixed = mx.sym.BlockGrad(centers)
        centers = fixed + (centers - fixed) * alpha
    # The sum hands every one of the D copies of a count the same gradient n_j.
    counts = mx.sym.sum(mx.sym.slice_axis(state, axis=2, begin=1, end=2), axis=1)
    # Features of another width than D fail at bind, naming this node: the loss would
    # otherwise broadcast them against the centers into a wrong value.
    data = mx.sym.reshape_like(data, centers, lhs_begin=1, rhs_begin=1,
                               name=name + "_feature_dim_check")
    value = _center_loss_graph(mx.sym, data, label, centers, counts, num_classes, feature_dim,
                               weight=weight, ignore_label=ignore_label, sparse_grad=False)
    # 'null': the feature gradient is lambda (x - c) per sample, as in the Gluon loss.
    return mx.sym.MakeLoss(value, normalization="null", name=name)
