"""The loss's MXNet-operator graph as it was before the fused operator (commit 2570cbc).

Kept in the bench, frozen, as the yardstick for the graph that is now the fallback:
"no slower than before at any shape, and faster on NCHW". Only what the bench runs is
kept: sparse labels, class weights, an ignore label, ``'valid'`` normalization. It
has none of the later per-position checks (a non-integer label is truncated into a
class; a weightless position with an infinite log-probability gives NaN).
"""
from mxnet.gluon.loss import Loss

from gluon_losses import WeightedSoftmaxCELoss
from gluon_losses.shapes import shape_plan


def pre_fused_softmax_ce(F, pred, label, class_weight, axis, ignore_label, ndim):
    """Per-sample weighted softmax cross-entropy, ``'valid'`` normalization, as built then."""
    log_prob = F.log_softmax(pred, axis=axis)
    label = F.BlockGrad(label)
    keep = label != ignore_label
    index = label * keep
    value = F.pick(log_prob, index, axis=axis)
    nan = F.slice_axis(class_weight, axis=0, begin=0, end=1) * float("nan")
    guarded = F.concat(nan, class_weight, nan, dim=0)
    weight = F.take(guarded, index + 1) * keep
    size = F.cast(F.size_array(label), "float32")
    flat = F.reshape(keep, shape=(-1,))
    weight = F.broadcast_mul(weight, size / F.maximum(F.dot(flat, flat), 1.0))
    loss = F.broadcast_mul(value, -weight)
    return loss if ndim == 2 else F.mean(loss, axis=0, exclude=True)


class PreFusedGraph(WeightedSoftmaxCELoss):
    """The loss as it was then: that graph, called the way it was called then (every
    shape check worked out again on each call, then gluon's ``HybridBlock.forward``),
    so that the comparison covers the whole call, as a user sees it."""

    def __init__(self, **kwargs):
        super().__init__(fused=False, **kwargs)

    def forward(self, pred, label, sample_weight=None):
        # every shape check again, uncached, as then; _prepare then finds it cached
        shape_plan.__wrapped__(pred.shape, label.shape,
                               None if sample_weight is None else sample_weight.shape,
                               self._axis, self._batch_axis, self._sparse_label,
                               self._num_classes)
        pred, label, sample_weight, _ = self._prepare(pred, label, sample_weight)
        return Loss.forward(self, pred, label, sample_weight)

    def hybrid_forward(self, F, pred, label, sample_weight=None, class_weight=None):
        return pre_fused_softmax_ce(F, pred, label, class_weight, self._axis,
                                    self._ignore_label, self._built_ndim)
