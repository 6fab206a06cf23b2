"""What gluon_losses.mxnet_internals assumes of MXNet's private names, checked against
the installed MXNet: each test fails, naming the assumption, if MXNet changes under it."""
import numpy as np
import mxnet as mx
import pytest
from mxnet import autograd, gluon, nd

from gluon_losses import mxnet_internals as internals


class Scale(gluon.HybridBlock):
    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.factor = self.params.get("factor", shape=(1,), init=mx.init.One())

    def hybrid_forward(self, F, x, factor):
        return F.broadcast_mul(x, factor)


def test_hybridized_built_graph_and_clear_graph():
    block = Scale()
    block.initialize()
    assert not internals.is_hybridized(block) and not internals.built_graph(block)
    block.hybridize()
    assert internals.is_hybridized(block) and not internals.built_graph(block)
    block(nd.ones((2, 3)))
    inputs, outputs = internals.built_graph(block)
    assert [s.name for s in inputs] == ["data"]
    assert "factor" in outputs.list_arguments()[-1]
    internals.clear_graph(block)
    assert not internals.built_graph(block)
    block(nd.ones((2, 3)))  # builds anew
    assert internals.built_graph(block)


def test_registered_parameters_and_averaged_value():
    block = Scale()
    assert list(internals.registered_parameters(block)) == ["factor"]
    block.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    block.factor.data(mx.cpu(1))[:] = 3.0
    value = internals.averaged_value(block.factor)
    assert value.context == mx.cpu() and value.asscalar() == 2.0  # (1 + 3) / 2


def test_needs_initialize_until_initialize_even_when_deferred():
    param = gluon.Parameter("p", shape=(0, 2), allow_deferred_init=True)  # shape unknown yet
    assert internals.needs_initialize(param)
    param.initialize()
    assert not internals.needs_initialize(param)


def test_grad_stype():
    assert internals.grad_stype(gluon.Parameter("dense", shape=(2, 2))) == "default"
    assert internals.grad_stype(gluon.Parameter("sparse", shape=(2, 2),
                                                grad_stype="row_sparse")) == "row_sparse"


def test_grad_freshness_follows_backward_and_mark_grad_used():
    param = gluon.Parameter("w", shape=(3,))
    param.initialize()
    array = param.list_data()[0]
    assert not internals.grad_is_fresh(array)
    with autograd.record():
        loss = (param.data() * 2).sum()
    loss.backward()
    assert internals.grad_is_fresh(array)
    internals.mark_grad_used(array)
    assert not internals.grad_is_fresh(array)
    # Trainer.step checks the same flag: a stale gradient is refused
    trainer = gluon.Trainer([param], "sgd", {"learning_rate": 0.1})
    with pytest.raises(UserWarning, match="has not been updated"):
        trainer.step(1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_set_rows_writes_only_the_listed_rows_in_place(dtype):
    target = nd.array(np.arange(12).reshape(4, 3), dtype=dtype)
    handle = target
    internals.set_rows(target, nd.array([3, 1], dtype="int64"),
                       nd.array([[-1, -2, -3], [-4, -5, -6]], dtype=dtype))
    assert handle is target
    np.testing.assert_array_equal(target.asnumpy(),
                                  [[0, 1, 2], [-4, -5, -6], [6, 7, 8], [-1, -2, -3]])
