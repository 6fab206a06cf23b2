"""Gradient accumulation with CenterLoss: several backward passes into grad_req='add'
before one step apply Eq. 4 once over the union of their batches (dense gradients);
row_sparse gradients, which MXNet cannot accumulate, raise naming the fix."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import CenterLoss
from reference import eq4_reference

K, D, ALPHA = 6, 3, 0.5


def batches(count, size=8, classes=K, seed=3):
    rng = np.random.RandomState(seed)
    return [(rng.randn(size, D).astype(np.float32),
             rng.randint(0, classes, size=size).astype(np.float32)) for _ in range(count)]


def backward(loss, x, y, contexts):
    xs = gluon.utils.split_and_load(nd.array(x), contexts)
    ys = gluon.utils.split_and_load(nd.array(y), contexts)
    with autograd.record():
        heads = [loss(a, b).mean() for a, b in zip(xs, ys)]
    autograd.backward(heads)


@pytest.mark.parametrize("contexts", [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]],
                         ids=["1 context", "2 contexts"])
@pytest.mark.parametrize("zero_grad", [True, False], ids=["zero_grad", "no zero_grad"])
def test_two_backward_passes_then_one_step_apply_eq4_over_their_union(contexts, zero_grad):
    loss = CenterLoss(K, D, alpha=ALPHA, dense=True)
    loss.initialize(ctx=contexts)
    loss.collect_params().setattr("grad_req", "add")
    trainer = loss.trainer()
    centers, counts = np.zeros((K, D)), np.zeros(K)
    data = batches(6)
    for first, second in zip(data[0::2], data[1::2]):
        backward(loss, *first, contexts)
        backward(loss, *second, contexts)
        trainer.step(16)
        if zero_grad:   # what a loop with grad_req='add' does; the step did it already
            loss.collect_params().zero_grad()
        x, y = (np.concatenate(parts) for parts in zip(first, second))
        centers = eq4_reference(centers, x, y, ALPHA)
        counts += np.bincount(y.astype(int), minlength=K)
        copies = [c.asnumpy() for c in loss.centers.list_data()]
        for copy in copies:
            np.testing.assert_array_equal(copy, copies[0])
            np.testing.assert_allclose(copy, centers, rtol=1e-5, atol=1e-6)
        for copy in loss.center_counts.list_data():
            np.testing.assert_array_equal(copy.asnumpy()[:, 0], counts)


def test_one_pass_with_grad_req_add_matches_grad_req_write():
    results = []
    for req in ("write", "add"):
        loss = CenterLoss(K, D, alpha=ALPHA, dense=True)
        loss.initialize()
        loss.collect_params().setattr("grad_req", req)
        trainer = loss.trainer()
        for x, y in batches(3):
            backward(loss, x, y, [mx.cpu()])
            trainer.step(len(y))
        results.append(loss.centers.data().asnumpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_row_sparse_centers_with_grad_req_add_raise_naming_the_fix():
    loss = CenterLoss(6000, D, alpha=ALPHA)
    assert not loss.dense
    loss.initialize()
    loss.collect_params().setattr("grad_req", "add")
    x, y = batches(1, classes=6000)[0]
    with pytest.raises(ValueError, match="grad_req='add'.*dense=True"):
        with autograd.record():
            loss(nd.array(x), nd.array(y))
    loss.hybridize()
    with pytest.raises(ValueError, match="grad_req='add'.*dense=True"):
        with autograd.record():
            loss(nd.array(x), nd.array(y))


def test_large_table_accumulates_with_dense_true():
    loss = CenterLoss(6000, D, alpha=ALPHA, dense=True)
    loss.initialize()
    loss.collect_params().setattr("grad_req", "add")
    trainer = loss.trainer()
    first, second = batches(2, classes=6000)
    backward(loss, *first, [mx.cpu()])
    backward(loss, *second, [mx.cpu()])
    trainer.step(16)
    x, y = (np.concatenate(parts) for parts in zip(first, second))
    np.testing.assert_allclose(loss.centers.data().asnumpy(),
                               eq4_reference(np.zeros((6000, D)), x, y, ALPHA),
                               rtol=1e-5, atol=1e-6)
