"""gluon_losses.symbol against mx.sym.SoftmaxOutput, float64 references and Module runs."""
import os
import pickle
import subprocess
import sys

import numpy as np
import mxnet as mx
import pytest

import dist_symbol_worker as dist_worker
from gluon_losses import WeightedSoftmaxCELoss
from gluon_losses.symbol import (WeightedCrossEntropy, center_loss, center_state_name,
                                 graph_constant, weighted_softmax_output, with_center_update)
from loopback_cluster import run_dist_sync, skip_unless_dist
from reference import (eq4_reference, log_softmax, loss_reference, numeric_gradient,
                       softmax_ce)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EPS32 = np.finfo(np.float32).eps
# (data shape, label shape): (N, C); multi_output (B, C, N); multi_output (B, C, H, W).
LAYOUTS = [((6, 4), (6,)), ((3, 4, 5), (3, 5)), ((2, 3, 2, 3), (2, 2, 3))]


def inputs(data_shape, label_shape, seed=0):
    """Scores and labels with every class and some -1 labels."""
    rng = np.random.RandomState(seed)
    x = (rng.randn(*data_shape) * 2).astype(np.float32)
    y = rng.randint(-1, data_shape[1], size=label_shape).astype(np.float32)
    y.flat[:3] = [-1, 0, data_shape[1] - 1]
    return x, y


def forward_backward(symbol, x, y, head=None):
    """Output and data gradient of ``symbol`` for a head gradient (random by default)."""
    executor = symbol.simple_bind(mx.cpu(), data=x.shape, label=y.shape)
    executor.forward(is_train=True, data=x, label=y)
    if head is None:
        head = np.random.RandomState(1).randn(*executor.outputs[0].shape)
    executor.backward(mx.nd.array(head))
    return executor.outputs[0].asnumpy(), executor.grad_dict["data"].asnumpy()


def data_label():
    return mx.sym.var("data"), mx.sym.var("label")


def softmax_z(y, normalization, multi_output):
    """SoftmaxOutput's divisor Z, as measured from its gradient."""
    if normalization == "valid":
        return max(1, int((y != -1).sum()))
    if normalization == "batch":
        return y.size
    return y[0].size if multi_output else 1


# ------------------------------------------------------------------ weighted_softmax_output
@pytest.mark.parametrize("layout", LAYOUTS, ids=["NC", "BCN", "BCHW"])
@pytest.mark.parametrize("normalization", ["valid", "batch", "null"])
@pytest.mark.parametrize("grad_scale", [1.0, 2.5])
def test_unit_weights_match_softmax_output(layout, normalization, grad_scale):
    x, y = inputs(*layout)
    multi = len(layout[0]) > 2
    kwargs = dict(ignore_label=-1, use_ignore=True, normalization=normalization,
                  multi_output=multi, grad_scale=grad_scale)
    ours = forward_backward(weighted_softmax_output(*data_label(), **kwargs), x, y)
    theirs = forward_backward(mx.sym.SoftmaxOutput(*data_label(), **kwargs), x, y)
    np.testing.assert_array_equal(ours[0], theirs[0])
    z = softmax_z(y, normalization, multi)
    assert z == 1 or np.abs(theirs[1]).max() < grad_scale / z * 1.01  # Z measured right
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=32 * EPS32 * grad_scale / z)


def float64_loss(x, y, weights, normalization, multi_output):
    """The scalar whose gradient weighted_softmax_output back-propagates, in float64."""
    reference_norm = "batch" if multi_output and normalization == "null" else normalization
    per_sample = softmax_ce(x, y, class_weight=weights, axis=1, ignore_label=-1,
                            normalization=reference_norm)
    return per_sample.sum() if multi_output and normalization == "null" else per_sample.mean()


@pytest.mark.parametrize("layout", LAYOUTS, ids=["NC", "BCN", "BCHW"])
@pytest.mark.parametrize("normalization", ["valid", "batch", "null"])
def test_class_weights_match_float64_reference(layout, normalization):
    x, y = inputs(*layout, seed=2)
    multi = len(layout[0]) > 2
    weights = np.linspace(0.25, 3.0, layout[0][1])
    out, grad = forward_backward(weighted_softmax_output(
        *data_label(), class_weight=weights, normalization=normalization,
        multi_output=multi, grad_scale=1.5), x, y)
    np.testing.assert_allclose(out, np.exp(log_softmax(x.astype(np.float64), axis=1)),
                               rtol=1e-6, atol=1e-7)
    reference = 1.5 * numeric_gradient(
        lambda v: float64_loss(v, y, weights, normalization, multi), x)
    # float32 rounding of p - onehot, at the gradient's scale s max(w) / Z
    atol = 1e-5 * 1.5 * weights.max() / softmax_z(y, normalization, multi)
    np.testing.assert_allclose(grad, reference, rtol=1e-4, atol=atol)
    # And the closed form w_y (p - onehot) s / Z, where y is kept.
    p = np.exp(log_softmax(x.astype(np.float64), axis=1))
    onehot = np.moveaxis(np.eye(layout[0][1])[np.maximum(y, 0).astype(int)], -1, 1)
    keep = np.expand_dims(y != -1, 1)
    w_y = np.expand_dims(weights[np.maximum(y, 0).astype(int)], 1)
    closed = 1.5 * w_y * (p - onehot) * keep / softmax_z(y, normalization, multi)
    np.testing.assert_allclose(grad, closed, rtol=1e-5, atol=atol)


def test_metric_logs_the_weighted_loss_over_batches():
    weights = np.array([0.5, 2.0, 1.0, 3.0])
    metric = WeightedCrossEntropy(class_weight=weights, ignore_label=-1)
    total, kept = 0.0, 0
    for seed in (3, 4):
        x, y = inputs((2, 4, 5), (2, 5), seed=seed)
        p = np.exp(log_softmax(x.astype(np.float64), axis=1)).astype(np.float32)
        metric.update([mx.nd.array(y)], [mx.nd.array(p), mx.nd.zeros((2,))])
        total += softmax_ce(x, y, class_weight=weights, axis=1, normalization="none").sum()
        kept += int((y != -1).sum())
    name, value = metric.get()
    assert name == "weighted-ce"
    np.testing.assert_allclose(value, total / kept, rtol=1e-5)


@pytest.mark.parametrize("class_weight", [None, [1.0, 2.0, 3.0, 4.0]], ids=["unit", "weighted"])
@pytest.mark.parametrize("bad", [4.0, -2.0, 255.0])
def test_bad_label_makes_its_position_nan(bad, class_weight):
    x, y = inputs((6, 4), (6,))
    y[4] = bad
    out, grad = forward_backward(weighted_softmax_output(*data_label(), class_weight=class_weight),
                                 x, y)
    assert np.isnan(out[4]).all() and np.isnan(grad[4]).all()
    assert np.isfinite(np.delete(out, 4, axis=0)).all()
    # multi_output: the position (sample 1, column 2) only.
    x, y = inputs((2, 4, 3), (2, 3))
    y[1, 2] = bad
    out, _ = forward_backward(weighted_softmax_output(*data_label(), class_weight=class_weight,
                                                      multi_output=True), x, y)
    assert np.isnan(out[1, :, 2]).all() and np.isnan(out).sum() == 4
    # Without use_ignore, -1 is a bad label too.
    x, y = inputs((6, 4), (6,))
    out, _ = forward_backward(weighted_softmax_output(*data_label(), class_weight=class_weight,
                                                      use_ignore=False), x, y)
    np.testing.assert_array_equal(np.isnan(out).any(axis=1), y == -1)


@pytest.mark.parametrize("class_weight", [None, [1.0, 1.0, 1.0, 1.0]], ids=["none", "ones"])
@pytest.mark.parametrize("ignore_label", [255, 2, -3])
def test_other_ignore_labels_match_softmax_output(ignore_label, class_weight):
    x, y = inputs((2, 4, 3, 2), (2, 3, 2))
    y[y == -1] = ignore_label
    kwargs = dict(ignore_label=ignore_label, use_ignore=True, normalization="valid",
                  multi_output=True)
    ours = forward_backward(weighted_softmax_output(*data_label(), class_weight=class_weight,
                                                    **kwargs), x, y)
    theirs = forward_backward(mx.sym.SoftmaxOutput(*data_label(), **kwargs), x, y)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def test_good_labels_give_finite_output_for_extreme_scores():
    x, y = inputs((6, 4), (6,))
    x[0] = [1e4, -1e4, 0, 0]
    y[0] = 1
    out, grad = forward_backward(weighted_softmax_output(*data_label(), class_weight=[1, 2, 3, 4]),
                                 x, y)
    assert np.isfinite(out).all() and np.isfinite(grad).all()


def test_class_weights_are_exact_graph_constants_that_survive_json():
    rng = np.random.RandomState(0)
    weights = (rng.rand(1000) * 10).astype(np.float32)
    weights[:4] = [1 / 3, 0, 1e-20, 3e7]
    weights[4:8] = 2.5  # a run of equal values
    weights[-1] = np.finfo(np.float32).max
    constant = mx.sym.load_json(graph_constant(weights, mx.sym.var("like"), name="w").tojson())
    assert constant.list_arguments() == ["like"]  # only its dtype is read
    assert constant.name == "w"
    value = constant.bind(mx.cpu(), {"like": mx.nd.ones((2, 3))}).forward()[0].asnumpy()
    np.testing.assert_array_equal(value, weights)
    half = constant.bind(mx.cpu(), {"like": mx.nd.ones((1,), dtype="float16")}).forward()[0]
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half.asnumpy(), weights.astype(np.float16))


@pytest.mark.parametrize("length", [3, 5])
@pytest.mark.parametrize("layout", [((6, 4), (6,)), ((2, 4, 3), (2, 3))], ids=["NC", "BCN"])
def test_class_weight_length_mismatch_fails_at_bind_naming_the_check(length, layout):
    symbol = weighted_softmax_output(*data_label(), class_weight=[1.0] * length, name="cls",
                                     multi_output=len(layout[0]) > 2)
    # simple_bind re-raises MXNet's shape error as a RuntimeError with the same text.
    with pytest.raises((mx.base.MXNetError, RuntimeError), match="cls_class_weight_check"):
        symbol.simple_bind(mx.cpu(), data=layout[0], label=layout[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(normalization="weight"), "normalization"),
    (dict(class_weight=[1, -1]), "class_weight"),
    (dict(grad_scale=float("nan")), "grad_scale"),
    (dict(ignore_label=0.5), "ignore_label"),
])
def test_bad_arguments_raise_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        weighted_softmax_output(*data_label(), **kwargs)


# ------------------------------------------------------------------ Module
def blobs(n, seed=0):
    """Three Gaussian classes in 8-D, imbalanced 6:3:1."""
    rng = np.random.RandomState(seed)
    y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    centers = rng.randn(3, 8) * 3
    return (centers[y] + rng.randn(n, 8)).astype(np.float32), y.astype(np.float32)


def mlp(class_weight):
    hidden = mx.sym.Activation(mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=16,
                                                     name="fc1"), act_type="relu")
    logits = mx.sym.FullyConnected(hidden, num_hidden=3, name="fc2")
    return weighted_softmax_output(logits, mx.sym.var("softmax_label"), class_weight=class_weight,
                                   normalization="valid", name="softmax")


@pytest.mark.parametrize("contexts", [[mx.cpu()], [mx.cpu(0), mx.cpu(1)]], ids=["1ctx", "2ctx"])
def test_module_fit_predict_and_checkpoint(tmp_path, contexts):
    weights = [0.5, 1.0, 3.0]
    x, y = blobs(300)
    mx.random.seed(0)
    mod = mx.mod.Module(mlp(weights), context=contexts)
    train = mx.io.NDArrayIter(x[:240], y[:240], batch_size=32, shuffle=True)
    # 'valid' divides by the batch already; Module's default rescale_grad would again.
    mod.fit(train, eval_metric="acc", optimizer="sgd", num_epoch=6,
            optimizer_params={"learning_rate": 0.5, "rescale_grad": 1.0},
            initializer=mx.init.Xavier())
    test = mx.io.NDArrayIter(x[240:], y[240:], batch_size=32)  # 60 rows: last batch padded
    assert dict(mod.score(test, ["acc"]))["accuracy"] > 0.9
    probabilities = mod.predict(test).asnumpy()
    assert probabilities.shape == (60, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    ce = WeightedCrossEntropy(class_weight=weights)
    mod.score(test, ce)
    assert np.isfinite(ce.get()[1])
    # The weights are no parameter of the model, and the saved graph holds them as they were.
    arg_params, aux_params = mod.get_params()
    assert sorted(arg_params) == ["fc1_bias", "fc1_weight", "fc2_bias", "fc2_weight"]
    mod.save_checkpoint(str(tmp_path / "mlp"), 6)
    symbol, _, _ = mx.model.load_checkpoint(str(tmp_path / "mlp"), 6)
    table = symbol.get_internals()["softmax_class_weight_output"]
    # it reads only the logits' dtype, whatever the parameters hold
    np.testing.assert_array_equal(
        table.simple_bind(mx.cpu(), data=(1, 8)).forward()[0].asnumpy(), np.float32(weights))


def test_exported_gluon_loss_marks_class_weights_constant(tmp_path):
    loss = WeightedSoftmaxCELoss(class_weight=[0.5, 2.0, 1.0, 3.0], axis=1)
    loss.hybridize()
    x, y = inputs((6, 4), (6,))
    loss(mx.nd.array(x), mx.nd.array(y))
    loss.export(str(tmp_path / "loss"))
    symbol = mx.sym.load(str(tmp_path / "loss-symbol.json"))
    name = [n for n in symbol.list_arguments() if n.endswith("class_weight")][0]
    attrs = symbol.attr_dict()[name]
    assert float(attrs["__lr_mult__"]) == 0 and float(attrs["__wd_mult__"]) == 0
    executor = symbol.simple_bind(mx.cpu(), data0=x.shape, data1=y.shape)
    executor.copy_params_from({name: mx.nd.array([0.5, 2.0, 1.0, 3.0])})
    executor.forward(is_train=True, data0=x, data1=y)
    executor.backward(mx.nd.ones((6,)))
    np.testing.assert_array_equal(executor.grad_dict[name].asnumpy(), np.zeros(4))
    assert np.isfinite(executor.grad_dict["data0"].asnumpy()).all()


# ------------------------------------------------------------------ center loss
STATE = dist_worker.STATE
K, D, ALPHA = dist_worker.NUM_CLASSES, dist_worker.FEATURE_DIM, dist_worker.ALPHA


def center_module(contexts, optimizer, kvstore="device", params=None):
    mod = mx.mod.Module(dist_worker.build_symbol(), context=contexts)
    mod.bind(data_shapes=[("data", (dist_worker.BATCH, D))],
             label_shapes=[("softmax_label", (dist_worker.BATCH,))])
    mod.init_params(arg_params=params or dist_worker.initial_params())
    if isinstance(optimizer, str):
        mod.init_optimizer(kvstore=kvstore, optimizer=optimizer,
                           optimizer_params={"learning_rate": dist_worker.LR})
    else:
        mod.init_optimizer(kvstore=kvstore, optimizer=optimizer)
    return mod


def step(mod, x, y):
    mod.forward_backward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)]))
    mod.update()


def device_copies(mod, name):
    """Every device's copy of a parameter (Module offers no public view of them)."""
    return [executor.arg_dict[name].asnumpy() for executor in mod._exec_group.execs]


@pytest.mark.parametrize("kvstore, on_kvstore", [("device", "1"), ("local", "1"), ("device", "0")])
def test_center_state_under_module_on_two_devices(monkeypatch, kvstore, on_kvstore):
    monkeypatch.setenv("MXNET_UPDATE_ON_KVSTORE", on_kvstore)
    contexts = [mx.cpu(0), mx.cpu(1)]
    mod = center_module(contexts, dist_worker.optimizer(), kvstore)
    assert mod._update_on_kvstore == (on_kvstore == "1")
    centers, counts = np.zeros((K, D)), np.zeros(K)
    for x, y in dist_worker.batches():
        step(mod, x, y)
        first, second = device_copies(mod, STATE)
        np.testing.assert_array_equal(first, second)
        centers = eq4_reference(centers, x, y, ALPHA, ignore_label=-1)
        counts += np.bincount(y[y >= 0].astype(int), minlength=K)
        np.testing.assert_allclose(first[..., 0], centers, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(first[..., 1], np.repeat(counts[:, None], D, axis=1))
    # Every other parameter is the named optimizer's: the same as plain 'sgd' (whose
    # lr_mult=0 leaves the state alone) on the same batches.
    plain = center_module(contexts, "sgd", kvstore)
    for x, y in dist_worker.batches():
        step(plain, x, y)
    np.testing.assert_array_equal(device_copies(plain, "fc_weight")[0],
                                  device_copies(mod, "fc_weight")[0])
    np.testing.assert_array_equal(device_copies(plain, STATE)[0], np.zeros((K, D, 2)))


def test_center_loss_value_and_feature_gradient_match_reference():
    x, y = next(dist_worker.batches())
    rng = np.random.RandomState(9)
    state = np.stack([rng.randn(K, D), np.zeros((K, D))], axis=-1).astype(np.float32)
    symbol = center_loss(mx.sym.var("data"), mx.sym.var("label"), K, D, weight=0.3,
                         ignore_label=-1)
    executor = symbol.simple_bind(mx.cpu(), data=x.shape, label=y.shape)
    executor.forward(is_train=True, data=x, label=y, **{STATE: state})
    executor.backward()
    value, grad = loss_reference(state[..., 0], x, y, 0.3, ignore_label=-1)
    np.testing.assert_allclose(executor.outputs[0].asnumpy(), value, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(executor.grad_dict["data"].asnumpy(), grad, rtol=1e-5, atol=1e-7)


def test_checkpoint_then_module_load_resumes_identically(tmp_path):
    contexts = [mx.cpu(0), mx.cpu(1)]

    def optimizer():
        return with_center_update("sgd", learning_rate=dist_worker.LR, momentum=0.9,
                                  rescale_grad=1.0 / dist_worker.BATCH)

    batches = list(dist_worker.batches()) * 2
    mod = center_module(contexts, optimizer())
    for x, y in batches[:3]:
        step(mod, x, y)
    prefix = str(tmp_path / "center")
    mod.save_checkpoint(prefix, 3, save_optimizer_states=True)
    for x, y in batches[3:]:
        step(mod, x, y)
    resumed = mx.mod.Module.load(prefix, 3, load_optimizer_states=True, context=contexts)
    resumed.bind(data_shapes=[("data", (dist_worker.BATCH, D))],
                 label_shapes=[("softmax_label", (dist_worker.BATCH,))])
    resumed.init_optimizer(kvstore="device", optimizer=optimizer())
    for x, y in batches[3:]:
        step(resumed, x, y)
    for name in (STATE, "fc_weight", "fc_bias"):
        np.testing.assert_array_equal(device_copies(resumed, name)[1], device_copies(mod, name)[1])


def test_center_update_optimizer_pickles_and_wraps_instances():
    optimizer = mx.optimizer.create(with_center_update("sgd", learning_rate=0.3, momentum=0.5))
    restored = pickle.loads(pickle.dumps(optimizer))
    assert type(restored).__name__ == "CenterUpdateSGD"
    assert isinstance(restored, mx.optimizer.SGD) and restored.lr == 0.3
    plain = mx.optimizer.Adam(learning_rate=0.01)
    wrapped = with_center_update(plain)
    assert isinstance(wrapped, mx.optimizer.Adam) and type(plain) is mx.optimizer.Adam
    # A state moves by Eq. 4; any other parameter by the optimizer.
    state = mx.nd.array(np.stack([np.ones((2, 3)), np.full((2, 3), 4.0)], axis=-1))
    grad = mx.nd.array(np.stack([np.full((2, 3), 0.5), np.full((2, 3), 4.0)], axis=-1))
    restored.update(center_state_name("center"), state, grad, None)
    np.testing.assert_allclose(state.asnumpy()[..., 0], 1 - 0.5 / 5)
    np.testing.assert_array_equal(state.asnumpy()[..., 1], 8.0)
    weight = mx.nd.ones((2,))
    restored.update("fc_weight", weight, mx.nd.ones((2,)), restored.create_state(0, weight))
    np.testing.assert_allclose(weight.asnumpy(), 1 - 0.3)


def test_state_names_end_with_the_suffix_the_optimizer_looks_for():
    assert center_state_name("center") == "center_state"
    assert center_state_name("face") == "face_center_state"
    assert "center_state" in center_loss(mx.sym.var("x"), mx.sym.var("y"), 3, 2).list_arguments()


@pytest.mark.parametrize("call, message", [
    (lambda: with_center_update("no-such-optimizer"), "optimizer"),
    (lambda: with_center_update(mx.optimizer.SGD(), learning_rate=1), "optimizer_params"),
    (lambda: center_loss(mx.sym.var("x"), mx.sym.var("y"), 3, 2, alpha=0), "alpha"),
    (lambda: center_loss(mx.sym.var("x"), mx.sym.var("y"), 0, 2), "num_classes"),
    # Labels travel as float32, exact only up to 2**24: the same limit as CenterLoss.
    (lambda: center_loss(mx.sym.var("x"), mx.sym.var("y"), 2 ** 24 + 1, 2), "num_classes.*16777216"),
])
def test_center_bad_arguments_raise_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@skip_unless_dist
def test_dist_sync_workers_match_one_process_on_the_whole_batch(tmp_path):
    # The servers unpickle with_center_update's optimizer, so they import gluon_losses too.
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run_dist_sync(["-m", "tests.dist_symbol_worker", str(tmp_path)], cwd=ROOT,
                  env=env, timeout=90)
    single = center_module([mx.cpu()], dist_worker.optimizer(), kvstore=None)
    for index, (x, y) in enumerate(dist_worker.batches()):
        step(single, x, y)
        first, second = (np.load(str(tmp_path / ("state_rank%d_step%d.npy" % (rank, index))))
                         for rank in (0, 1))
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, device_copies(single, STATE)[0], rtol=1e-5, atol=1e-6)


# What a parameter server does: `import mxnet` runs the server loop from inside that
# import, which unpickles the optimizer before mxnet.gluon or the mx.nd alias exist.
SERVER_SIDE = r"""
import pickle, sys
payload = sys.stdin.buffer.read()
class UnpickleMidImport:
    done = False
    def find_spec(self, name, path, target=None):
        if name == "mxnet.kvstore.kvstore_server" and not self.done:
            self.done = True
            import mxnet.ndarray as nd
            optimizer = pickle.loads(payload)
            optimizer.idx2name = {3: "center_state"}
            flat_state, flat_grad = nd.zeros((12,)), nd.ones((12,))   # (K, D, 2) flattened
            optimizer.update(3, flat_state, flat_grad, None)
            print(type(optimizer).__name__, flat_state.asnumpy()[:2].tolist())
        return None
sys.meta_path.insert(0, UnpickleMidImport())
import mxnet
"""


def test_optimizer_unpickles_on_a_server_during_import_mxnet():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", SERVER_SIDE], input=pickle.dumps(
        mx.optimizer.create(with_center_update("sgd", momentum=0.9)), 0), env=env, capture_output=True,
        timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # Eq. 4 on a flat copy: c = 0 - 1 / (1 + 1), count 0 + 1.
    assert done.stdout.decode().split("\n")[-2] == "CenterUpdateSGD [-0.5, 1.0]"
