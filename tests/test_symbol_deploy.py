"""weighted_softmax_output deployed as SoftmaxOutput is: inference binds without labels,
float16, the output's name, Module.load + predict on a host with only MXNet, and the
label rule it shares with the Gluon loss."""
import os

import numpy as np
import mxnet as mx
import pytest

from gluon_losses import WeightedSoftmaxCELoss
from gluon_losses.symbol import center_loss, inference_graph, weighted_softmax_output
from onnx_runtime import run_onnx_model
from reference import run_loss
from stock_mxnet import run_stock_python

# (scores' layer, data shape): a classifier (N, C) and a per-pixel head (B, C, H, W)
HEADS = {"NC": (4, (6, 5)), "BCHW": (4, (2, 5, 3, 3))}


def head(layout, name="fc"):
    classes, shape = HEADS[layout]
    data = mx.sym.var("data")
    if len(shape) == 2:
        return mx.sym.FullyConnected(data, num_hidden=classes, name=name), shape
    return mx.sym.Convolution(data, num_filter=classes, kernel=(1, 1), name=name), shape


def head_params(layout, seed=0):
    classes, shape = HEADS[layout]
    rng = np.random.RandomState(seed)
    kernel = (classes, shape[1]) + ((1, 1) if len(shape) > 2 else ())
    return {"fc_weight": mx.nd.array(rng.randn(*kernel)),
            "fc_bias": mx.nd.array(rng.randn(classes))}


def inference_output(symbol, layout, x, **module_args):
    """Module bound for inference with data shapes only; the forward's first output."""
    module = mx.mod.Module(symbol, **module_args)
    module.bind(data_shapes=[("data", x.shape)], for_training=False)
    module.set_params(head_params(layout), {}, allow_missing=True)
    module.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    return module.get_outputs()[0]


@pytest.mark.filterwarnings("ignore:Data provided by label_shapes")  # MXNet's, as for stock
@pytest.mark.parametrize("label_names", [None, ("softmax_label",)], ids=["none", "declared"])
@pytest.mark.parametrize("ignore_label", [-1, 255])
@pytest.mark.parametrize("class_weight", [None, [1.0, 2.0, 3.0, 0.5]], ids=["unit", "weighted"])
@pytest.mark.parametrize("layout", sorted(HEADS))
def test_inference_without_labels_gives_softmax_outputs_probabilities(
        layout, class_weight, ignore_label, label_names):
    scores, shape = head(layout)
    x = np.random.RandomState(1).randn(*shape).astype(np.float32)
    label = mx.sym.var("softmax_label")
    ours = weighted_softmax_output(scores, label, class_weight=class_weight,
                                   ignore_label=ignore_label, multi_output=len(shape) > 2,
                                   name="softmax")
    stock = mx.sym.SoftmaxOutput(scores, label, multi_output=len(shape) > 2, name="softmax")
    ours, stock = (inference_output(s, layout, x, label_names=label_names).asnumpy()
                   for s in (ours, stock))
    np.testing.assert_array_equal(ours, stock)
    assert np.isfinite(ours).all()


@pytest.mark.parametrize("multi_output", [False, True])
def test_output_is_named_after_the_node_in_every_layout(multi_output):
    layout = "BCHW" if multi_output else "NC"
    scores, shape = head(layout)
    symbol = weighted_softmax_output(scores, mx.sym.var("label"), class_weight=[1, 2, 3, 4],
                                     multi_output=multi_output, name="cls_prob")
    assert symbol.list_outputs() == ["cls_prob_output"]
    # a metric that names the output finds it
    x = np.random.RandomState(2).randn(*shape).astype(np.float32)
    y = np.random.RandomState(3).randint(0, 4, size=(shape[0],) + shape[2:]).astype(np.float32)
    module = mx.mod.Module(symbol, label_names=("label",))
    module.bind(data_shapes=[("data", shape)], label_shapes=[("label", y.shape)],
                for_training=False)
    module.set_params(head_params(layout), {})
    metric = mx.metric.Accuracy(output_names=["cls_prob_output"], label_names=["label"])
    module.forward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)]), is_train=False)
    module.update_metric(metric, [mx.nd.array(y)])
    predicted = module.get_outputs()[0].asnumpy().argmax(axis=1)
    assert metric.get()[1] == pytest.approx((predicted == y).mean())


@pytest.mark.parametrize("class_weight", [None, [1.0, 2.0, 3.0, 0.5]], ids=["unit", "weighted"])
@pytest.mark.parametrize("layout", sorted(HEADS))
def test_float16_trains_as_float32_does_within_half_precision(layout, class_weight):
    classes, shape = HEADS[layout]
    rng = np.random.RandomState(4)
    x = rng.randn(shape[0], classes, *shape[2:]).astype(np.float32)
    y = rng.randint(-1, classes, size=(shape[0],) + shape[2:]).astype(np.float32)

    def run(symbol, dtype):
        executor = symbol.simple_bind(mx.cpu(), data=x.shape, label=y.shape,
                                      type_dict={"data": dtype})
        executor.forward(is_train=True, data=x.astype(dtype), label=y.astype(dtype))
        executor.backward()
        assert executor.outputs[0].dtype == np.dtype(dtype)
        assert executor.grad_dict["data"].dtype == np.dtype(dtype)
        return (executor.outputs[0].asnumpy().astype(np.float64),
                executor.grad_dict["data"].asnumpy().astype(np.float64))

    args = dict(multi_output=len(shape) > 2, name="softmax")
    ours = weighted_softmax_output(mx.sym.var("data"), mx.sym.var("label"),
                                   class_weight=class_weight, **args)
    half, single = run(ours, "float16"), run(ours, "float32")
    for h, s in zip(half, single):
        np.testing.assert_allclose(h, s, rtol=2e-3, atol=2e-3)
    if class_weight is None:  # unit weights: SoftmaxOutput's own float16 result, bitwise
        stock = mx.sym.SoftmaxOutput(mx.sym.var("data"), mx.sym.var("label"), use_ignore=True,
                                     normalization="valid", **args)
        for h, s in zip(half, run(stock, "float16")):
            np.testing.assert_array_equal(h, s)


@pytest.mark.parametrize("ignore_label", [None, -1, 0, 255, -3])
def test_label_rule_is_the_gluon_losss(ignore_label):
    """Which positions are ignored (zero gradient) and which are bad (NaN): the symbol
    and the Gluon loss decide alike, e.g. -1 with ignore_label=255 is bad in both."""
    labels = np.array([-4, -3, -2, -1, 0, 1, 2, 3, 4, 255, 0.5, 2.5], np.float32)
    x = np.random.RandomState(5).randn(labels.size, 4).astype(np.float32)
    symbol = weighted_softmax_output(mx.sym.var("data"), mx.sym.var("label"),
                                     class_weight=[1.0, 2.0, 3.0, 0.5],
                                     ignore_label=-1 if ignore_label is None else ignore_label,
                                     use_ignore=ignore_label is not None, normalization="null")
    executor = symbol.simple_bind(mx.cpu(), data=x.shape, label=labels.shape)
    executor.forward(is_train=True, data=x, label=labels)
    executor.backward()
    symbol_grad = executor.grad_dict["data"].asnumpy()
    loss = WeightedSoftmaxCELoss(class_weight=[1.0, 2.0, 3.0, 0.5], ignore_label=ignore_label,
                                 normalization="none", fused=False)
    loss.hybridize()  # imperative calls raise for a bad label; a graph makes it NaN
    _, gluon_grad = run_loss(loss, x, labels)
    bad = np.isnan(gluon_grad).any(axis=1)
    ignored = (gluon_grad == 0).all(axis=1)
    classes = np.isin(labels, [0, 1, 2, 3]) & (labels != ignore_label)
    assert (bad | ignored | classes).all() and (bad ^ ignored ^ classes).all()
    np.testing.assert_array_equal(np.isnan(symbol_grad).any(axis=1), bad)
    np.testing.assert_array_equal((symbol_grad == 0).all(axis=1), ignored)
    assert bad[3] == (ignore_label != -1)  # -1 is a class of no one unless it is ignored
    assert bad[-2:].all()  # not integers
    # and the gradients of the good positions are the same function ('null' vs 'none')
    np.testing.assert_allclose(symbol_grad[classes], gluon_grad[classes], rtol=1e-5, atol=1e-7)


def test_center_loss_refuses_features_of_another_width_at_bind():
    symbol = center_loss(mx.sym.var("data"), mx.sym.var("label"), num_classes=4, feature_dim=2,
                         name="center")
    with pytest.raises((mx.base.MXNetError, RuntimeError), match="center_feature_dim_check"):
        symbol.simple_bind(mx.cpu(), data=(2, 3), label=(2,))
    executor = symbol.simple_bind(mx.cpu(), data=(2, 2), label=(2,))
    assert executor.outputs[0].shape == (2,)


# Runs on the deployment host: Module.load + an inference bind given only data shapes +
# predict, and the tutorial's form (load_checkpoint, label_names=None, set_params).
STOCK_PREDICT = """
import sys
import numpy as np
import mxnet as mx
prefix, shape = sys.argv[1], tuple(int(s) for s in sys.argv[2].split(","))
x = np.load(prefix + "-x.npy")
module = mx.mod.Module.load(prefix, 1)
module.bind(data_shapes=[("data", shape)], for_training=False)
loaded = module.predict(mx.io.NDArrayIter(x, batch_size=shape[0])).asnumpy()
symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 1)
tutorial = mx.mod.Module(symbol, label_names=None)
tutorial.bind(data_shapes=[("data", shape)], for_training=False)
tutorial.set_params(arg_params, aux_params, allow_missing=True)
tutorial.forward(mx.io.DataBatch([mx.nd.array(x[:shape[0]])]), is_train=False)
np.save(prefix + "-loaded.npy", loaded)
np.save(prefix + "-tutorial.npy", tutorial.get_outputs()[0].asnumpy())
print("gluon_losses" in sys.modules)
"""


@pytest.mark.parametrize("layout", sorted(HEADS))
def test_module_load_and_predict_on_a_host_with_only_mxnet(tmp_path, layout):
    classes, shape = HEADS[layout]
    scores, _ = head(layout)
    symbol = weighted_softmax_output(scores, mx.sym.var("softmax_label"),
                                     class_weight=[1.0, 2.0, 3.0, 0.5],
                                     multi_output=len(shape) > 2, name="softmax")
    rng = np.random.RandomState(6)
    x = rng.randn(shape[0] * 2, *shape[1:]).astype(np.float32)
    y = rng.randint(0, classes, size=(x.shape[0],) + shape[2:]).astype(np.float32)
    module = mx.mod.Module(symbol)
    module.fit(mx.io.NDArrayIter(x, y, batch_size=shape[0]), num_epoch=1,
               optimizer_params={"learning_rate": 0.1}, initializer=mx.init.Xavier())
    prefix = str(tmp_path / "net")
    module.save_checkpoint(prefix, 1)
    np.save(prefix + "-x.npy", x)
    expected = module.predict(mx.io.NDArrayIter(x, batch_size=shape[0])).asnumpy()
    result = run_stock_python(
        "import runpy, sys; sys.argv = ['predict', %r, %r]; exec(%r)"
        % (prefix, ",".join(map(str, shape)), STOCK_PREDICT), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "False"
    np.testing.assert_array_equal(np.load(prefix + "-loaded.npy"), expected)
    np.testing.assert_array_equal(np.load(prefix + "-tutorial.npy"), expected[:shape[0]])


def trained_head(layout, class_weight=(1.0, 2.0, 3.0, 0.5)):
    scores, shape = head(layout)
    symbol = weighted_softmax_output(scores, mx.sym.var("softmax_label"),
                                     class_weight=list(class_weight),
                                     multi_output=len(shape) > 2, name="softmax")
    return symbol, shape, head_params(layout)


@pytest.mark.parametrize("layout", sorted(HEADS))
def test_inference_graph_gives_the_training_graphs_forward_without_labels(layout):
    symbol, shape, params = trained_head(layout)
    graph = inference_graph(symbol)
    assert graph.list_arguments() == ["data", "fc_weight", "fc_bias"]
    assert graph.list_outputs() == ["softmax_output"]
    x = np.random.RandomState(7).randn(*shape).astype(np.float32)
    y = np.zeros((shape[0],) + shape[2:], np.float32)
    training = symbol.bind(mx.cpu(), dict(params, data=mx.nd.array(x),
                                          softmax_label=mx.nd.array(y)))
    inference = graph.bind(mx.cpu(), dict(params, data=mx.nd.array(x)))
    np.testing.assert_array_equal(inference.forward()[0].asnumpy(),
                                  training.forward(is_train=False)[0].asnumpy())


@pytest.mark.parametrize("layout", sorted(HEADS))
def test_onnx_export_of_the_inference_graph_runs_in_onnx_runtime(tmp_path, layout):
    pytest.importorskip("onnx", reason="mx.onnx needs onnx (the test extra)")
    symbol, shape, params = trained_head(layout)
    graph = inference_graph(symbol)
    x = np.random.RandomState(8).randn(*shape).astype(np.float32)
    model = mx.onnx.export_model(graph, params, [shape], np.float32,
                                 str(tmp_path / "net.onnx"))
    np.savez(tmp_path / "inputs.npz", data=x)
    result = run_onnx_model(model, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = graph.bind(mx.cpu(), dict(params, data=mx.nd.array(x))).forward()[0].asnumpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["arr_0"], expected, rtol=1e-5,
                               atol=1e-7)
