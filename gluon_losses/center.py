"""Center loss (Wen et al., ECCV 2016) with the paper's center update.

The loss value and the feature gradient come from an ordinary ``HybridBlock``; the
centers are moved by a dedicated ``gluon.Trainer`` that applies Eq. 4 of the paper,

.. math:: c_j \\leftarrow c_j - \\alpha \\frac{\\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j},

with :math:`n_j` the number of samples of class j in the *whole* batch, summed over
devices and workers.

How the update travels. The forward pass adds, per sample, a term that is exactly
zero in value, ``t - BlockGrad(t)``, whose gradient deposits
:math:`\\sum_{i: y_i=j} (c_j - x_i)` into ``centers.grad`` and :math:`n_j` into
``center_counts.grad``. Gradients are what every MXNet data-parallel mechanism already
knows how to sum (kvstore ``device``/``local``/``dist_sync``, Horovod), so the
numerator and the global counts arrive summed over the whole batch, and every copy
applies the same update to the same numbers.

Two storage paths, chosen per loss (see ``DENSE_MAX_ELEMENTS`` and the ``dense``
argument of :class:`CenterLoss`). Large tables get row_sparse gradients
(``Embedding(sparse_grad=True)``) and a row-wise update, so the cost of a step grows
with the batch, not with the number of classes. Small tables (K x D at most
``DENSE_MAX_ELEMENTS``) get dense gradients and one fused update over the whole table:
touching K x D floats is cheaper there than the per-call overhead of row_sparse
storage. Both give the same centers.
"""
import mxnet as mx
from mxnet import nd
from mxnet.gluon.loss import Loss

from .center_trainer import CenterTrainer
# Re-exported: the update kernels lived here before they got a module of their own.
from .center_update import apply_center_update, apply_dense_center_update, eq4_rows
from .checks import (as_ndarray, check_center_loss_args, check_labels, check_not_empty,
                     check_shape)
from .mxnet_internals import SerializedFirstCall, is_hybridized, needs_initialize
from .graph_ops import detached_label, poison_invalid

__all__ = ["CenterLoss", "CenterTrainer", "center_loss", "apply_center_update",
           "apply_dense_center_update", "eq4_rows", "DENSE_MAX_ELEMENTS"]

# Tables of at most this many center elements (K x D) get dense gradients and a fused
# whole-table update; larger ones row_sparse gradients and a row-wise update (see the
# module docstring). Measured on 2 CPU cores, MXNet 1.9, B=256, step = forward +
# backward + update, dense vs row_sparse: K=10 D=2 0.29 vs 0.45 ms; K*D=16384 (K=1024
# D=16, K=16384 D=1) 0.40 vs 0.61 and 0.69 vs 0.94 ms; K*D=32768 mixed (K=2048 D=16
# 0.52 vs 0.66, K=32768 D=1 1.05 vs 0.99 ms); K*D=65536 row_sparse wins (K=4096 D=16
# 0.99 vs 0.90, K=65536 D=1 1.77 vs 1.26 ms). Read when a CenterLoss is created;
# ``CenterLoss(dense=...)`` overrides it per loss.
DENSE_MAX_ELEMENTS = 16384


def center_loss(F, features, label, centers, center_counts, num_classes, feature_dim,
                weight=1.0, ignore_label=None, sparse_grad=True):
    r"""Per-sample center loss :math:`\frac{w}{2}\lVert x_i - c_{y_i}\rVert^2`, shape ``(B,)``.

    ``F`` is ``mx.nd`` or ``mx.sym``; ``features`` is ``(B, D)``, ``label`` ``(B,)``,
    ``centers`` ``(K, D)`` and ``center_counts`` ``(K, 1)``. Labels outside
    ``[0, num_classes)`` or not integers, that are not ``ignore_label``, give NaN.

    Besides the value, the graph routes Eq. 4's statistics into gradients, whatever the
    head gradient (see :class:`CenterTrainer`): ``centers`` gets
    :math:`\sum_{i: y_i=j} (c_j - x_i)` and ``center_counts`` gets :math:`n_j`, over
    the samples whose label is kept and whose features are finite. Being gradients,
    they add up over devices and workers like any other. ``sparse_grad`` picks their
    storage: row_sparse (True) or dense (False), as the parameters' ``grad_stype``.
    """
    label = detached_label(F, label)
    # Ignored positions point at class 0 and invalid ones at the nearest class (1.5 at
    # class 1), so Embedding never sees an index it would clip or truncate; `keep`
    # masks both out below.
    if ignore_label is None:
        index = F.clip(F.floor(label), 0, num_classes - 1)
        keep = index == label
    else:
        not_ignored = label != ignore_label
        label = label * not_ignored
        index = F.clip(F.floor(label), 0, num_classes - 1)
        keep = (index == label) * not_ignored
    invalid = index != label
    center = F.Embedding(index, centers, input_dim=num_classes, output_dim=feature_dim,
                         sparse_grad=sparse_grad)
    count = F.Embedding(index, center_counts, input_dim=num_classes, output_dim=1,
                        sparse_grad=sparse_grad)

    fixed_center = F.BlockGrad(center)
    # Masked positions see their own center instead of their features: zero loss,
    # zero gradient both ways, even when such a feature is NaN.
    diff = F.where(keep, features, fixed_center) - fixed_center

    # Samples that feed the centers: kept, with every difference finite (x * 0 is NaN
    # exactly where x is NaN or Inf). Tested per element, not on a row sum, so a finite
    # row whose sum or squared norm overflows still moves its center.
    use = keep * F.min((diff * 0) == 0, axis=1)
    if weight == 0:
        # Exact zeros even where the squared distance overflows (inf * 0 is NaN).
        value = F.zeros_like(use)
    else:
        value = F.sum(F.square(diff), axis=1) * (0.5 * weight)
    pull = F.where(use, diff, F.zeros_like(diff))
    # Zero-valued carrier: d/dc = (c - x), d/dn = 1 per used sample. make_loss's gradient
    # is 1 whatever the head gradient, so the centers get Eq. 4's statistics however the
    # output is reduced or scaled (L.mean(), 0.01 * L, ce + L), while the feature
    # gradient, through `value`, follows the head gradient as any loss's does.
    carrier = (F.reshape(count, shape=(-1,)) * use
               - F.sum(center * F.BlockGrad(pull), axis=1))
    value = value + F.make_loss(carrier - F.BlockGrad(carrier))
    return poison_invalid(F, value, invalid)




class CenterLoss(SerializedFirstCall, Loss):
    r"""Center loss of Wen et al. (ECCV 2016) with the paper's center update.

    .. math::

        L_i = \frac{\lambda}{2} \lVert x_i - c_{y_i} \rVert_2^2,
        \qquad
        \frac{\partial L_i}{\partial x_i} = \lambda (x_i - c_{y_i}),

    so ``loss(x, y).mean()`` is :math:`\lambda \frac{1}{2B}\sum_i \lVert x_i -
    c_{y_i}\rVert^2`, the normalization of the authors' Caffe layer. The centers
    receive no gradient-descent update; :meth:`trainer` returns the trainer that moves
    every class j present in the batch by Eq. 4 of the paper,

    .. math::

        c_j \leftarrow c_j - \alpha \frac{\sum_{i: y_i=j} (c_j - x_i)}{1 + n_j},

    with :math:`n_j` the number of samples of class j in the whole batch (all devices
    and workers). Neither :math:`\lambda` nor the network's optimizer touch it; absent
    classes do not move.

    Usage::

        loss = CenterLoss(num_classes, feature_dim, alpha=0.5, weight=0.01)
        loss.initialize(ctx=ctx)              # centers start at zero
        center_trainer = loss.trainer()       # kwargs go to CenterTrainer, e.g. kvstore
        with autograd.record():
            feats, logits = net(x)
            L = ce(logits, y) + loss(feats, y)
        L.backward()                          # or L.mean().backward(), (0.01 * L).backward()
        trainer.step(batch_size)
        center_trainer.step(batch_size)

    The centers move by Eq. 4 however the output is reduced or scaled before
    ``backward``: ``L.mean()``, ``0.01 * L``, ``ce + L`` or ``autograd.backward`` on a
    list all give the same update, while the feature gradient follows the head
    gradient as any loss's does.

    Parameters
    ----------
    num_classes : int
        Number of classes K (>= 1).
    feature_dim : int
        Feature dimension D (>= 1).
    alpha : float, default 0.5
        Center learning rate of Eq. 4, in (0, 1].
    weight : float or None, default 1.0
        :math:`\lambda`, scales the loss and the feature gradient (not the centers).
    ignore_label : int or None, default None
        Positions with this label give zero loss, no feature gradient and no center
        update.
    batch_axis : int, default 0
        0: features are ``(B, D)``; 1: features are ``(D, B)``.
    dense : bool or None, default None
        Storage of the centers' gradients. None: dense when K x D is at most
        ``gluon_losses.center.DENSE_MAX_ELEMENTS`` (16384), row_sparse above. True/False
        force dense/row_sparse. Dense: a step costs O(K x D), with the least per-step
        overhead, best for small tables. Row_sparse: a step costs O(batch), flat in K.
        Both give the same centers; the choice is read by ``loss.dense`` and kept by
        the trainer.

    Inputs:
        - **features**: ``(B, D)`` (``(D, B)`` with ``batch_axis=1``), float16, float32
          or float64, computed in the centers' dtype (float32 unless the loss was
          cast), so the output has that dtype. NumPy arrays and lists are accepted
          and copied to NDArrays; an empty batch raises ``ValueError``.
        - **label**: ``(B,)`` integer class indices in ``[0, K)`` or ``ignore_label``.

    Outputs:
        - **loss**: ``(B,)``. NaN where a feature is NaN/Inf (the centers are kept
          finite) or, inside a hybridized graph, where a label is invalid (in
          imperative mode an invalid label raises ``ValueError``).

    Parameters held:
        - **centers**: ``(K, D)``, zeros at start; saved by ``save_parameters`` and
          ``export``.
        - **center_counts**: ``(K, 1)``, the number of samples each center has been
          updated with so far; saved alongside.
    """

    def __init__(self, num_classes, feature_dim, alpha=0.5, weight=1.0, ignore_label=None,
                 batch_axis=0, dense=None, **kwargs):
        (self._num_classes, self._feature_dim, self._alpha, weight,
         self._ignore_label) = check_center_loss_args(
             num_classes, feature_dim, alpha, 1.0 if weight is None else weight, ignore_label)
        if isinstance(batch_axis, bool) or batch_axis not in (0, 1):
            raise ValueError("batch_axis must be 0 or 1, got %r" % (batch_axis,))
        if dense is None:
            dense = self._num_classes * self._feature_dim <= DENSE_MAX_ELEMENTS
        elif not isinstance(dense, bool):
            raise ValueError("dense must be True, False or None, got %r" % (dense,))
        self._dense = dense
        grad_stype = "default" if dense else "row_sparse"
        super().__init__(weight, batch_axis, **kwargs)
        with self.name_scope():
            # lr_mult/wd_mult 0: should the centers end up in a network's optimizer by
            # mistake, its update cannot move them; Eq. 4 is CenterTrainer's alone.
            self.centers = self.params.get(
                "centers", shape=(self._num_classes, self._feature_dim),
                init=mx.init.Zero(), grad_stype=grad_stype, lr_mult=0.0, wd_mult=0.0)
            self.center_counts = self.params.get(
                "center_counts", shape=(self._num_classes, 1),
                init=mx.init.Zero(), grad_stype=grad_stype, lr_mult=0.0, wd_mult=0.0)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def feature_dim(self):
        return self._feature_dim

    @property
    def alpha(self):
        return self._alpha

    @property
    def dense(self):
        """True when the centers have dense gradients (small tables), False for row_sparse."""
        return self._dense

    def trainer(self, **kwargs):
        """A :class:`CenterTrainer` for this loss's centers (call after ``initialize``).

        ``kwargs`` go to :class:`CenterTrainer` (``kvstore``, ``allreduce``, ...);
        ``alpha`` defaults to this loss's ``alpha``.
        """
        kwargs.setdefault("alpha", self._alpha)
        return CenterTrainer(self.centers, self.center_counts, **kwargs)

    def forward(self, features, label):
        if not self._dense and self.centers.grad_req == "add" and mx.autograd.is_recording():
            raise ValueError(
                "grad_req='add' on %s: CenterLoss with row_sparse center gradients "
                "(dense=False, the default above %d center elements; here %d x %d) cannot "
                "accumulate them (MXNet's sparse Embedding only writes). Create the loss "
                "with dense=True to accumulate several backward passes; the step then "
                "applies Eq. 4 once over their union." % (
                    self.centers.name, DENSE_MAX_ELEMENTS, self._num_classes,
                    self._feature_dim))
        if not isinstance(features, mx.sym.Symbol):
            features, label = self._check_inputs(features, label)
        return super().forward(features, label)

    def _check_inputs(self, features, label):
        # Each shape and dtype is read once: at small batches every ctypes call shows
        # in the step time.
        if not isinstance(features, nd.NDArray):
            features = as_ndarray("features", features)
        if not isinstance(label, nd.NDArray):
            label = as_ndarray("label", label, features.context)
        shape = features.shape
        if len(shape) != 2:
            raise ValueError("features must be 2-D (%s), got shape %s" % (
                "batch, feature_dim" if self._batch_axis == 0 else "feature_dim, batch",
                shape))
        check_not_empty("features", shape)
        dim = shape[1 - self._batch_axis]
        if dim != self._feature_dim:
            raise ValueError("features has feature dimension %d but feature_dim=%d"
                             % (dim, self._feature_dim))
        batch = shape[self._batch_axis]
        label_shape = label.shape
        if label_shape == (batch, 1):
            label = label.reshape((batch,))
        else:
            check_shape("label", label_shape, (batch,), "features of shape %s" % (shape,))
        if needs_initialize(self.centers):
            raise RuntimeError("CenterLoss holds learned centers: call "
                               "loss.initialize(ctx=...) before using it")
        if not is_hybridized(self):
            # Imperative mode only: reading labels back is the price of a clear error.
            check_labels(label, self._num_classes, self._ignore_label)
        # Features of another float type are computed in the centers' dtype (float32
        # unless the loss was cast), which the graph's ops need on both sides; the
        # gradient flows back in the features' own dtype.
        dtype = self.centers.dtype
        if features.dtype != dtype:
            features = features.astype(dtype)
        # Masks built from the label multiply the loss, so they share its dtype.
        return features, label if label.dtype == dtype else label.astype(dtype)

    def hybrid_forward(self, F, features, label, centers, center_counts):
        if self._batch_axis == 1:
            features = F.transpose(features)
        return center_loss(F, features, label, centers, center_counts, self._num_classes,
                           self._feature_dim, self._weight, self._ignore_label,
                           sparse_grad=not self._dense)

    def __repr__(self):
        return "%s(num_classes=%d, feature_dim=%d, alpha=%g, weight=%g, ignore_label=%r)" % (
            type(self).__name__, self._num_classes, self._feature_dim, self._alpha,
            self._weight, self._ignore_label)
