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
import itertools

import numpy as np
import mxnet as mx
from mxnet import gluon, nd
from mxnet.gluon.loss import Loss

from .checks import (check_float, check_ignore_label, check_int, check_labels, check_shape,
                     detached_label, poison_invalid)

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
    ``[0, num_classes)`` that are not ``ignore_label`` give NaN.

    Besides the value, the graph routes Eq. 4's statistics into gradients (with head
    gradient 1 per sample; see :class:`CenterTrainer`): ``centers`` gets
    :math:`\sum_{i: y_i=j} (c_j - x_i)` and ``center_counts`` gets :math:`n_j`, over
    the samples whose label is kept and whose features are finite. Being gradients,
    they add up over devices and workers like any other. ``sparse_grad`` picks their
    storage: row_sparse (True) or dense (False), as the parameters' ``grad_stype``.
    """
    label = detached_label(F, label)
    # Ignored positions point at class 0 and invalid ones at the nearest class, so
    # Embedding never sees an index it would clip; `keep` masks both out below.
    if ignore_label is None:
        index = F.clip(label, 0, num_classes - 1)
        keep = index == label
    else:
        not_ignored = label != ignore_label
        label = label * not_ignored
        index = F.clip(label, 0, num_classes - 1)
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
    value = F.sum(F.square(diff), axis=1) * (0.5 * weight)

    # Samples that feed the centers: kept, with finite features (a row sum times 0
    # is NaN exactly when the row holds a NaN or Inf, or overflows).
    use = keep * ((F.sum(diff, axis=1) * 0) == 0)
    pull = F.where(use, diff, F.zeros_like(diff))
    # Zero-valued carrier: d/dc = (c - x), d/dn = 1 per used sample.
    carrier = (F.reshape(count, shape=(-1,)) * use
               - F.sum(center * F.BlockGrad(pull), axis=1))
    value = value + (carrier - F.BlockGrad(carrier))
    return poison_invalid(F, value, invalid)


def eq4_rows(F, old, old_counts, numerator, batch_counts, alpha):
    """New values of the listed rows of the centers and counts under Eq. 4.

    ``old`` ``(R, D)`` and ``old_counts`` ``(R, 1)`` are the rows' current values,
    ``numerator`` ``(R, D)`` is :math:`\\sum_{i: y_i=j}(c_j - x_i)` and ``batch_counts``
    ``(R, 1)`` is :math:`n_j`. A row whose step is not finite keeps its old value and
    count (a second guard: :func:`center_loss` already leaves non-finite features out,
    so this catches float overflow, or statistics summed by hand).
    """
    step = F.broadcast_mul(numerator, alpha / (batch_counts + 1))
    finite = (F.sum(step, axis=1) * 0) == 0
    return (F.where(finite, old - step, old),
            F.where(finite, old_counts + batch_counts, old_counts))


_EQ4_INPUTS = ("weight", "counts", "rows", "numerator", "batch_counts")
_EQ4_OPS = {}


def _eq4_op(alpha):
    """(CachedOp, input order) computing Eq. 4's new rows, one per alpha.

    One fused graph instead of a dozen imperative calls, and a bare CachedOp instead
    of a HybridBlock: at small batches, per-call overhead is what the step pays for.
    """
    entry = _EQ4_OPS.get(alpha)
    if entry is None:
        weight, counts, rows, numerator, batch_counts = (mx.sym.var(n) for n in _EQ4_INPUTS)
        outputs = eq4_rows(mx.sym, mx.sym.take(weight, rows), mx.sym.take(counts, rows),
                           numerator, batch_counts, alpha)
        graph = mx.sym.Group(list(outputs))
        order = [_EQ4_INPUTS.index(name) for name in graph.list_inputs()]
        entry = _EQ4_OPS[alpha] = (nd.CachedOp(graph, flags=[("static_alloc", True)]), order)
    return entry


_DENSE_EQ4_INPUTS = ("weight", "counts", "numerator", "batch_counts")
_DENSE_EQ4_OPS = {}


def _dense_eq4_op(alpha, shape, dtype):
    """(CachedOp, input order) for Eq. 4 over whole tables, one per alpha and table.

    Static shapes let MXNet plan memory and executors once per table instead of on
    every call: measured here, that nearly halves the cost of a call at small K x D.
    """
    key = (alpha, shape, dtype)
    entry = _DENSE_EQ4_OPS.get(key)
    if entry is None:
        graph = mx.sym.Group(list(eq4_rows(mx.sym, *(mx.sym.var(n) for n in _DENSE_EQ4_INPUTS),
                                           alpha)))
        order = tuple(_DENSE_EQ4_INPUTS.index(name) for name in graph.list_inputs())
        flags = [("static_alloc", True), ("static_shape", True)]
        entry = _DENSE_EQ4_OPS[key] = (nd.CachedOp(graph, flags=flags), order)
    return entry


def apply_dense_center_update(weight, counts, numerator, batch_counts, alpha):
    """Apply Eq. 4 in place to the whole of ``weight`` ``(K, D)`` and ``counts`` ``(K, 1)``.

    ``numerator`` ``(K, D)`` and ``batch_counts`` ``(K, 1)`` are the dense summed
    gradients of the small-table path: zero on the rows of classes absent from the
    batch, whose step is then exactly zero, so those rows keep their values bitwise.
    One fused graph writes straight into ``weight`` and ``counts`` (Eq. 4 is elementwise
    per row, so reading and writing the same array is safe).
    """
    op, order = _dense_eq4_op(float(alpha), weight.shape, weight.dtype)
    args = (weight, counts, numerator, batch_counts)
    op(*[args[i] for i in order], out=[weight, counts])


def apply_center_update(weight, counts, rows, numerator, batch_counts, alpha):
    """Apply Eq. 4 in place to the rows ``rows`` of ``weight`` and count them in ``counts``.

    ``weight`` ``(K, D)`` and ``counts`` ``(K, 1)`` are dense NDArrays; ``rows`` ``(R,)``
    holds distinct class ids, ``numerator`` ``(R, D)`` and ``batch_counts`` ``(R, 1)``
    their summed gradients (see :func:`eq4_rows`). Only the listed rows are read or
    written, so the cost does not depend on the number of classes. This is the whole
    update; a custom data-parallel setup (e.g. Horovod) can call it after summing the
    two gradients itself.
    """
    op, order = _eq4_op(float(alpha))
    args = (weight, counts, rows, numerator, batch_counts)
    new_rows, new_counts = op(*[args[i] for i in order])
    # _scatter_set_nd (what NDArray.__setitem__ uses for index arrays) writes only
    # the listed rows of `out`, in place.
    index = rows.reshape((1, -1))
    nd._internal._scatter_set_nd(lhs=weight, rhs=new_rows, indices=index,
                                 shape=weight.shape, out=weight)
    nd._internal._scatter_set_nd(lhs=counts, rhs=new_counts, indices=index,
                                 shape=counts.shape, out=counts)


# Labels travel in the features' dtype; float32 holds integers exactly up to 2**24.
_MAX_CLASSES = 2 ** 24

# A process holds one dist_sync kvstore, which the network's gluon.Trainer (keys 0,
# 1, ... for its parameters) and CenterTrainer then share. CenterTrainer keys start
# far above those, in a block of _KEYS_PER_TRAINER per trainer; trainers are numbered
# in creation order, which is the same on every worker. Not higher: ps-lite picks a
# key's server with int arithmetic (key * 9973), which must not overflow.
_KEY_BASE = 100000
_KEYS_PER_TRAINER = 64
_FIRST_SUM_KEY = 2  # after centers (0) and counts (1)
_TRAINER_NUMBERS = itertools.count()


class CenterTrainer(gluon.Trainer):
    r"""The ``gluon.Trainer`` that moves the centers of a :class:`CenterLoss` by Eq. 4.

    Create it with :meth:`CenterLoss.trainer`. Call ``step(batch_size)`` after every
    backward pass, right after the network's own ``trainer.step``. ``batch_size`` is
    accepted for symmetry with ``gluon.Trainer`` and not used: Eq. 4 normalizes by the
    per-class counts, which the backward pass supplies.

    The gradients of ``centers`` and ``center_counts`` are summed over contexts
    (``kvstore='device'`` or ``'local'``) or over workers (``'dist_sync'``, or
    ``'dist_sync_device'``); then every copy applies the same update, so all copies
    stay bitwise identical. ``dist_async`` is refused: it cannot keep copies equal.

    Parameters
    ----------
    centers, center_counts : Parameter
        ``(K, D)`` and ``(K, 1)``, initialized, both with row_sparse gradients (large
        tables: a row-wise update, flat in K) or both with dense ones (small tables:
        one fused update over the whole table); see :class:`CenterLoss`'s ``dense``.
    alpha : float
        Center learning rate in (0, 1]. Settable later through ``trainer.alpha``.
    kvstore : str or KVStore or None
        As for ``gluon.Trainer``. Used only with several contexts or a ``dist`` type.
        A ``dist_sync`` KVStore can be shared with the network's ``gluon.Trainer``
        (this trainer's keys start at 100000), which must then use
        ``update_on_kvstore=False``: an optimizer on the servers would also apply to
        the center statistics.
    allreduce : callable or None
        For data parallelism outside kvstore (Horovod): ``allreduce(array)`` must sum
        the dense ``array`` over all workers in place, e.g.
        ``lambda a: hvd.allreduce_(a, op=hvd.Sum)``. It is called twice per step, with
        the counts ``(K, 1)`` and then the numerator: the whole ``(K, D)`` gradient with
        dense gradients, or with row_sparse ones a block of numerator rows ``(H, D)``, H
        at most the global batch rounded up to a power of two. One context per
        process; ``kvstore`` is then not used.
    """

    def __init__(self, centers, center_counts, alpha=0.5, kvstore='device',
                 compression_params=None, update_on_kvstore=None, allreduce=None):
        if allreduce is not None and not callable(allreduce):
            raise ValueError("allreduce must be a callable that sums an NDArray over "
                             "workers in place, got %r" % (allreduce,))
        self._allreduce = allreduce
        if update_on_kvstore:
            raise ValueError("update_on_kvstore must be None or False for CenterTrainer: "
                             "Eq. 4 needs the summed gradients on the workers")
        if compression_params is not None:
            raise ValueError("compression_params is not supported by CenterTrainer: "
                             "compressed gradients would make Eq. 4 inexact")
        self.alpha = alpha
        stypes = {centers._grad_stype, center_counts._grad_stype}
        if len(stypes) != 1 or not stypes <= {"default", "row_sparse"}:
            raise ValueError("centers and center_counts must both have row_sparse or both "
                             "dense gradients, got %s and %s"
                             % (centers._grad_stype, center_counts._grad_stype))
        self._dense = stypes == {"default"}
        self._key_base = _KEY_BASE + _KEYS_PER_TRAINER * next(_TRAINER_NUMBERS)
        # The optimizer is never called; gluon.Trainer wants one to exist.
        super().__init__([centers, center_counts], "sgd", {"learning_rate": 0.0},
                         kvstore=kvstore, update_on_kvstore=False)
        if allreduce is not None and len(self._contexts) != 1:
            raise ValueError("allreduce needs the centers on one context per process, "
                             "got %s" % (self._contexts,))
        # Copies must agree before the first forward pass, since each computes its
        # part of the numerator against its own centers: start every context and
        # worker from context 0 of worker 0 now, not at the first step.
        self._init_kvstore()
        self._init_params()

    @property
    def alpha(self):
        """Center learning rate of Eq. 4, in (0, 1]."""
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        self._alpha = check_float("alpha", value, 0.0, 1.0, low_open=True)

    def _init_kvstore(self):
        kvstore = None if self._allreduce else self._kvstore_params["kvstore"]
        if kvstore is not None and not isinstance(kvstore, (str, mx.kv.KVStore)):
            raise ValueError("kvstore must be a kvstore type name, a KVStore or None, "
                             "got %r" % (kvstore,))
        kv_type = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", "")
        if "async" in kv_type:
            raise ValueError("kvstore=%r cannot keep the centers identical on every "
                             "worker; use dist_sync" % kv_type)
        if "nccl" in kv_type:
            raise ValueError("kvstore=%r cannot sum row_sparse gradients; use 'device'"
                             % kv_type)
        if isinstance(kvstore, str):
            if "dist" in kvstore or len(self._contexts) > 1:
                kvstore = mx.kv.create(kvstore)
            else:
                kvstore = None
        self._kvstore = kvstore
        self._distributed = kvstore is not None and "dist" in kvstore.type
        self._dense_keys = {}
        self._update_on_kvstore = False
        self._kv_initialized = True

    def _init_params(self):
        # gluon.Trainer's version, on this trainer's own keys: copies of centers and
        # counts start from context 0 of worker 0.
        if self._kvstore is not None:
            for offset, param in enumerate(self._params):
                arrays = param.list_data()
                self._kvstore.broadcast(self._key_base + offset, arrays[0], arrays)
        self._params_to_init = []

    def allreduce_grads(self):
        """Sum the center gradients over contexts and workers; see ``update``."""
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        self._reduced = self._reduce()

    def update(self, batch_size=None, ignore_stale_grad=False):
        """Apply Eq. 4 with the gradients summed by ``allreduce_grads``."""
        centers, counts = self._params
        stale = [d for d in centers._check_and_get(centers._data, list) if not d._fresh_grad]
        if stale:
            if ignore_stale_grad:
                return
            raise UserWarning(
                "Gradient of %s on %s has not been updated by backward since the last "
                "step: run the loss forward inside autograd.record() and call backward "
                "before CenterTrainer.step" % (centers.name, stale[0].context))
        reduced = getattr(self, "_reduced", None)
        if reduced is None:
            raise RuntimeError("call allreduce_grads() before update(), or use step()")
        self._reduced = None
        for w, c, sums in zip(centers.list_data(), counts.list_data(), reduced):
            if sums is None:
                continue
            rows, numerator, batch_counts = sums
            if rows is None:
                apply_dense_center_update(w, c, numerator, batch_counts, self.alpha)
            else:
                apply_center_update(w, c, rows, numerator, batch_counts, self.alpha)
        for d in centers.list_data() + counts.list_data():
            d._fresh_grad = False

    def step(self, batch_size=None, ignore_stale_grad=False):
        """Sum the gradients over contexts/workers and move the centers by Eq. 4."""
        self.allreduce_grads()
        self.update(batch_size, ignore_stale_grad)

    def _reduce(self):
        """Per context: (rows, summed numerator rows, summed counts of those rows).

        With dense gradients, rows is None and the two sums are whole tables.
        """
        centers, counts = self._params
        grads, count_grads = centers.list_grad(), counts.list_grad()
        kv = self._kvstore
        if self._dense:
            # Dense sums of K x D floats, small by construction (DENSE_MAX_ELEMENTS).
            if kv is not None or self._allreduce is not None:
                self._sum_dense("dense counts", count_grads)
                self._sum_dense("dense numerator", grads)
            return [(None, g, n) for g, n in zip(grads, count_grads)]
        if kv is None and self._allreduce is None:
            return [(g.indices, g.data, n.data) for g, n in zip(grads, count_grads)]
        if kv is not None and not self._distributed:
            # Local kvstores sum row_sparse pushes and hand the sum back on pull; both
            # keys receive the same index sets, so the two sums share their rows.
            kv.push(self._key_base, grads, priority=0)
            kv.pull(self._key_base, grads, priority=0, ignore_sparse=False)
            kv.push(self._key_base + 1, count_grads, priority=-1)
            kv.pull(self._key_base + 1, count_grads, priority=-1, ignore_sparse=False)
            return [(g.indices, g.data, n.data) for g, n in zip(grads, count_grads)]
        return self._reduce_across_workers(grads, count_grads)

    def _reduce_across_workers(self, grads, count_grads):
        """dist_sync / allreduce: sums of dense arrays only, none of size K x D.

        MXNet's parameter server sums row_sparse pushes only through an optimizer
        running on the server and cannot hand a summed row_sparse gradient back, and
        Horovod's allreduce is dense. So the counts go first, dense (K floats); their
        nonzero rows U are the union of every worker's classes, the same list on all
        workers. Each worker then writes its numerator rows at their places in U into
        a dense (H, D) block, H = |U| rounded up to a power of two (|U| is at most the
        global batch), and the blocks are summed.
        """
        num_classes = count_grads[0].shape[0]
        counts = [n.tostype("default") for n in count_grads]
        self._sum_dense("counts", counts)
        rows = nd.contrib.boolean_mask(
            nd.arange(num_classes, ctx=counts[0].context, dtype="int64"),
            counts[0].reshape((-1,)) > 0)
        used = rows.shape[0]
        if used == 0:  # every position of the global batch was ignored
            return [None] * len(grads)
        # Blocks come in power-of-two heights so that a handful of keys serve all
        # batches; rows past `used` stay zero.
        height = max(16, 1 << (used - 1).bit_length())
        blocks = []
        for g in grads:
            ctx = g.context
            # place[j] = position of class j in U, or -1.
            place = nd.full((num_classes,), -1, ctx=ctx)
            nd._internal._scatter_set_nd(
                lhs=place, rhs=nd.arange(used, ctx=ctx),
                indices=rows.as_in_context(ctx).reshape((1, -1)), shape=place.shape,
                out=place)
            local = nd.take(place, g.indices)
            # Rows this worker saw only as ignored positions are not in U.
            present = local >= 0
            block = nd.zeros((height, g.shape[1]), ctx=ctx, dtype=g.dtype)
            if int(present.sum().asscalar()):
                at = nd.contrib.boolean_mask(local, present).astype("int64")
                nd._internal._scatter_set_nd(
                    lhs=block, rhs=nd.contrib.boolean_mask(g.data, present),
                    indices=at.reshape((1, -1)), shape=block.shape, out=block)
            blocks.append(block)
        self._sum_dense(("numerator", height), blocks)
        return [(rows.as_in_context(b.context), nd.slice_axis(b, axis=0, begin=0, end=used),
                 nd.take(n, rows.as_in_context(n.context)))
                for b, n in zip(blocks, counts)]

    def _sum_dense(self, name, arrays):
        """Sum same-shaped dense arrays in place over contexts and workers."""
        if self._allreduce is not None:
            self._allreduce(arrays[0])
            return
        key = self._dense_keys.get(name)
        if key is None:
            # Every worker asks for the same names in the same order, so the keys agree.
            key = _FIRST_SUM_KEY + len(self._dense_keys)
            if key >= _KEYS_PER_TRAINER:
                raise RuntimeError("CenterTrainer ran out of kvstore keys")
            key = self._dense_keys[name] = self._key_base + key
            self._kvstore.init(key, nd.zeros_like(arrays[0]))
        self._kvstore.push(key, arrays, priority=0)
        self._kvstore.pull(key, arrays, priority=0)


class CenterLoss(Loss):
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
        center_trainer = loss.trainer()       # kwargs go to gluon.Trainer, e.g. kvstore
        with autograd.record():
            feats, logits = net(x)
            L = ce(logits, y) + loss(feats, y)
        L.backward()                          # head gradient 1 per sample (Gluon default)
        trainer.step(batch_size)
        center_trainer.step(batch_size)

    The backward pass must give each sample's loss a head gradient of 1, which is what
    ``L.backward()`` on a per-sample loss (or on a sum of per-sample losses, or
    ``autograd.backward`` on a list of them) does. Put :math:`\lambda` in ``weight``,
    not as a factor outside, and do not call ``backward`` on ``L.mean()``: a head
    gradient other than 1 scales the counts of Eq. 4.

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
        - **features**: ``(B, D)`` (``(D, B)`` with ``batch_axis=1``), float.
        - **label**: ``(B,)`` class indices in ``[0, K)`` or ``ignore_label``.

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
        self._num_classes = check_int("num_classes", num_classes, 1)
        if self._num_classes > _MAX_CLASSES:
            raise ValueError("num_classes must be <= %d (labels travel as float32 ids), got %d"
                             % (_MAX_CLASSES, self._num_classes))
        self._feature_dim = check_int("feature_dim", feature_dim, 1)
        self._alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True)
        weight = 1.0 if weight is None else check_float("weight", weight, 0.0)
        self._ignore_label = check_ignore_label(ignore_label)
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

        ``kwargs`` go to ``gluon.Trainer`` (``kvstore``, ...); ``alpha`` defaults to
        this loss's ``alpha``.
        """
        kwargs.setdefault("alpha", self._alpha)
        return CenterTrainer(self.centers, self.center_counts, **kwargs)

    def forward(self, features, label):
        if isinstance(features, nd.NDArray):
            label = self._check_inputs(features, label)
        return super().forward(features, label)

    def _check_inputs(self, features, label):
        # Each shape and dtype is read once: at small batches every ctypes call shows
        # in the step time.
        shape = features.shape
        if len(shape) != 2:
            raise ValueError("features must be 2-D (%s), got shape %s" % (
                "batch, feature_dim" if self._batch_axis == 0 else "feature_dim, batch",
                shape))
        dim = shape[1 - self._batch_axis]
        if dim != self._feature_dim:
            raise ValueError("features has feature dimension %d but feature_dim=%d"
                             % (dim, self._feature_dim))
        if not isinstance(label, nd.NDArray):
            raise ValueError("label must be an NDArray, got %s" % type(label).__name__)
        batch = shape[self._batch_axis]
        label_shape = label.shape
        if label_shape == (batch, 1):
            label = label.reshape((batch,))
        else:
            check_shape("label", label_shape, (batch,), "features of shape %s" % (shape,))
        if self.centers._data is None and not self.centers._deferred_init:
            raise RuntimeError("CenterLoss holds learned centers: call "
                               "loss.initialize(ctx=...) before using it")
        if not self._active:
            # Imperative mode only: reading labels back is the price of a clear error.
            check_labels(label, self._num_classes, self._ignore_label)
        # Masks built from the label multiply the loss, so they share its dtype.
        dtype = features.dtype
        return label if label.dtype == dtype else label.astype(dtype)

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
