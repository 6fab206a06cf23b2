"""What gluon_losses.mxnet_internals assumes of MXNet's private names, checked against
the installed MXNet: each test fails, naming the assumption, if MXNet changes under it."""
import os

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


def test_load_operator_library_binds_the_operator_in_a_fresh_process():
    import subprocess
    import sys
    from gluon_losses import fused
    if not fused.available():
        pytest.skip("fused operator unavailable: %s" % fused.unavailable_reason())
    code = """
import mxnet as mx
from gluon_losses import mxnet_internals
from gluon_losses.fused import OP_NAME, library_path
assert not hasattr(mx.nd, OP_NAME)
mxnet_internals.load_operator_library(library_path(), OP_NAME)
for module in (mx.nd, mx.nd.op, mx.sym, mx.sym.op):
    assert callable(getattr(module, OP_NAME))
out = getattr(mx.nd, OP_NAME)(mx.nd.array([[0.0, 0.0]]), mx.nd.array([1.0]), axis=-1,
                              normalization="none")
print(out.asnumpy().tolist())
"""
    env = dict(os.environ, GLUON_LOSSES_FUSED="0")  # nothing loads it on import
    result = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.allclose(eval(result.stdout.strip().splitlines()[-1]), [np.log(2.0)])


@pytest.mark.parametrize("kvstore, expected", [(None, 2), ("local", 0)])
def test_devices_updated_without_kvstore_is_read_from_modules_update(kvstore, expected):
    seen = []

    class Recording(mx.optimizer.SGD):
        def update_multi_precision(self, index, weight, grad, state):
            seen.append(internals.devices_updated_without_kvstore())
            super().update_multi_precision(index, weight, grad, state)

    net = mx.sym.LinearRegressionOutput(
        mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=1, name="fc"),
        mx.sym.var("label"))
    module = mx.mod.Module(net, label_names=("label",), context=[mx.cpu(0), mx.cpu(1)])
    module.bind(data_shapes=[("data", (4, 3))], label_shapes=[("label", (4, 1))])
    module.init_params(mx.init.Xavier())
    module.init_optimizer(kvstore=kvstore, optimizer=Recording(learning_rate=0.1))
    module.forward_backward(mx.io.DataBatch([nd.ones((4, 3))], [nd.ones((4, 1))]))
    module.update()
    assert seen and set(seen) == {expected}
    assert internals.devices_updated_without_kvstore() == 0  # outside Module's update


def test_transformed_dataset_base_unwraps_gluons_lazy_transform():
    base = gluon.data.SimpleDataset([1, 2, 3])
    assert internals.transformed_dataset_base(base.transform(lambda x: x * 2)) is base
    assert internals.transformed_dataset_base(base) is None
    # transform_first wraps the same way
    pairs = gluon.data.SimpleDataset([(1, 0), (2, 1)])
    assert internals.transformed_dataset_base(pairs.transform_first(lambda x: x)) is pairs
