r"""Class-weighted segmentation loss with an auxiliary head, called like GluonCV's.

:class:`MixWeightedSoftmaxCELoss` takes GluonCV's
``MixSoftmaxCrossEntropyLoss(aux, aux_weight, ignore_label)`` arguments and its call
``criterion(*outputs, label)``, so it drops into GluonCV's segmentation training
(``DataParallelCriterion`` included), and adds class weights and the package's
normalizations.
"""
import numpy as np
import mxnet as mx
from mxnet.gluon.loss import Loss

from .checks import check_float, on_context
from .graph_ops import apply_scalar_weight
from .softmax_ce import WeightedSoftmaxCELoss

__all__ = ["MixWeightedSoftmaxCELoss"]


class MixWeightedSoftmaxCELoss(WeightedSoftmaxCELoss):
    r"""Weighted softmax cross-entropy of a main and an auxiliary head on one label.

    .. math::

        L = L_\text{main} + \lambda\, L_\text{aux}

    where each term is :class:`WeightedSoftmaxCELoss` of that head's ``pred``
    against the shared ``label`` (class weights :math:`w`, ignore label,
    ``normalization``) and :math:`\lambda` = ``aux_weight``. With ``aux=False``,
    :math:`L = L_\text{main}`.

    With unit weights and ``normalization='batch'`` (the default) the value equals
    GluonCV's ``MixSoftmaxCrossEntropyLoss``: per sample, the mean over all pixels of
    :math:`-\log p_{y}`, void pixels counting 0.

    Gradient. This loss backpropagates the gradient of its value. With the output
    summed over the batch (``loss.backward()``), the main head gets
    :math:`w_{y_i} (p_i - \mathrm{onehot}(y_i))\, B / Z` at pixel :math:`i` and the
    auxiliary head :math:`\lambda` times its own. GluonCV's loss backpropagates
    ``SoftmaxOutput``'s :math:`(p_i - \mathrm{onehot}(y_i)) / N_\text{valid}` into
    *both* heads, :math:`N_\text{valid}` being the non-void pixels of the call,
    whatever value it reports: ``aux_weight`` never reaches its gradient.
    ``normalization='valid', aux_weight=1.0, weight=1.0 / B`` (:math:`B` the
    per-device batch) reproduces that gradient exactly; the value is then
    :math:`1/B` times the mean over non-void pixels of both heads' cross-entropy.

    Parameters
    ----------
    aux : bool, default True
        Whether the call carries an auxiliary head's prediction.
    aux_weight : float >= 0, default 0.2
        :math:`\lambda`.
    ignore_label : int or None, default -1
        Void label. GluonCV's segmentation datasets turn the 255 of the mask files
        into -1. ``aux`` is the only positional argument, so
        ``MixWeightedSoftmaxCELoss(args.aux, aux_weight=args.aux_weight)`` works as in
        GluonCV's ``train.py``; every other argument is keyword-only.
    class_weight : list, ndarray, NDArray or None, default None
        Length-C non-negative class weights (see :class:`WeightedSoftmaxCELoss`),
        applied to both heads.
    normalization : {'batch', 'valid', 'weight', 'null', 'none'}, default 'batch'
        The divisor of each term, see :class:`WeightedSoftmaxCELoss`.
    axis : int, default 1
        The class axis of the predictions, 1 for ``(B, C, H, W)``.
    from_logits, label_smoothing, gamma, weight, batch_axis
        As in :class:`WeightedSoftmaxCELoss`. Both terms run on MXNet's own operators
        (``fused=False``), which the segmentation example's figures were made with.

    Inputs
    ------
    - **pred**: ``(B, C, H, W)`` main-head logits (any shape with the classes along ``axis``).
    - **aux_pred**: the auxiliary head's logits, ``pred``'s shape; only with ``aux=True``.
    - **label**: ``(B, H, W)`` class indices or ``ignore_label``; ``(B, 1, H, W)`` is accepted.

    Outputs
    -------
    - **loss**: ``(B,)``; with ``normalization='none'``, the label's shape.
    """

    def __init__(self, aux=True, *, aux_weight=0.2, ignore_label=-1, class_weight=None,
                 normalization="batch", axis=1, from_logits=False, label_smoothing=0.0,
                 gamma=0.0, weight=None, batch_axis=0, **kwargs):
        # GluonCV's scripts call MixSoftmaxCrossEntropyLoss(args.aux, aux_weight=...,
        # ignore_label=...): aux is the one positional argument. GluonCV's second positional
        # is mixup, which this loss lacks, so everything after aux is keyword-only.
        if not isinstance(aux, (bool, np.bool_)):
            raise ValueError("aux must be True or False, got %r (the arguments are GluonCV's: "
                             "aux, then aux_weight=..., ignore_label=... by keyword; pass class weights by keyword, "
                             "class_weight=...)" % (aux,))
        super().__init__(class_weight=class_weight, axis=axis, sparse_label=True,
                         from_logits=from_logits, ignore_label=ignore_label,
                         normalization=normalization, label_smoothing=label_smoothing,
                         gamma=gamma, weight=weight, batch_axis=batch_axis, fused=False,
                         **kwargs)
        self._aux = bool(aux)
        self._aux_weight = check_float("aux_weight", aux_weight, low=0.0)

    @property
    def aux(self):
        return self._aux

    @property
    def aux_weight(self):
        return self._aux_weight

    def forward(self, *inputs):
        """``criterion(pred, aux_pred, label)``, or ``criterion(pred, label)`` with ``aux=False``."""
        expected = ("pred", "aux_pred", "label") if self._aux else ("pred", "label")
        if len(inputs) != len(expected):
            raise ValueError("%s(aux=%s) is called as criterion(%s), got %d inputs"
                             % (type(self).__name__, self._aux, ", ".join(expected),
                                len(inputs)))
        preds, label = list(inputs[:-1]), inputs[-1]
        if not isinstance(preds[0], mx.sym.Symbol):
            preds[0], label, _, context = self._prepare(preds[0], label, None)
            main_shape = preds[0].shape
            if self._aux:
                aux_pred = on_context("aux_pred", preds[1], context)
                if aux_pred.shape != main_shape:
                    raise ValueError("aux_pred has shape %s but pred has shape %s; both heads "
                                     "are scored against one label" % (aux_pred.shape,
                                                                        main_shape))
                preds[1] = aux_pred if aux_pred.dtype == np.float32 else aux_pred.astype(
                    np.float32)
            with self._calls_on(context):
                # The parent's forward takes (pred, label, sample_weight); the block's any.
                return Loss.forward(self, *preds, label)
        return Loss.forward(self, *preds, label)

    def hybrid_forward(self, F, *inputs, class_weight=None):
        preds, label = inputs[:-1], inputs[-1]
        loss = self._scaled_loss(F, preds[0], label, None, class_weight, 1.0)
        if len(preds) > 1:
            loss = loss + self._scaled_loss(F, preds[1], label, None, class_weight,
                                            self._aux_weight)
        return apply_scalar_weight(F, loss, self._weight)

    def __repr__(self):
        return ("{name}(num_classes={nc}, aux={aux}, aux_weight={aw}, ignore_label={ig}, "
                "normalization={norm!r}, axis={axis})").format(
                    name=type(self).__name__, nc=self._num_classes, aux=self._aux,
                    aw=self._aux_weight, ig=self._ignore_label, norm=self._normalization,
                    axis=self._axis)
