"""CenterLoss: value, gradient and the paper's center update (Wen et al. 2016, Eq. 4)."""
import os

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
from hypothesis import HealthCheck, given, settings, strategies as st

from gluon_losses import CenterLoss, WeightedSoftmaxCELoss
from gluon_losses import center as center_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import dist_center_worker as dist_worker
from loopback_cluster import run_dist_sync, skip_unless_dist
from recorded_labels import OutputsAndLabels
from reference import eq4_reference, loss_reference


def run_step(loss, trainer, x, y, ctx=mx.cpu()):
    """Forward, backward with head gradient 1 per sample, center step."""
    features = nd.array(x, ctx=ctx)
    features.attach_grad()
    with autograd.record():
        out = loss(features, nd.array(y, ctx=ctx))
    out.backward()
    trainer.step(len(y))
    return out.asnumpy(), features.grad.asnumpy()


def make_loss(num_classes=6, feature_dim=3, ctx=mx.cpu(), hybridize=False, **kwargs):
    loss = CenterLoss(num_classes, feature_dim, **kwargs)
    loss.initialize(ctx=ctx)
    if hybridize:
        loss.hybridize()
    return loss


# Both storage paths of the centers' gradients: dense (small tables, the default
# below DENSE_MAX_ELEMENTS) and row_sparse (large tables), forced with `dense=`.
DENSE = pytest.mark.parametrize("dense", [True, False], ids=["dense", "row_sparse"])


def random_batches(steps, batch, feature_dim, labels, seed=0):
    rng = np.random.RandomState(seed)
    return [(rng.randn(batch, feature_dim).astype(np.float32),
             rng.choice(labels, size=batch).astype(np.float32)) for _ in range(steps)]


# ------------------------------------------------------------- Eq. 4, value --

@DENSE
@pytest.mark.parametrize("hybridize", [False, True, "static"])
def test_matches_numpy_eq4_over_steps(hybridize, dense):
    # Classes 0..3 repeat within batches; 4 and 5 never appear; -1 is ignored.
    alpha, weight = 0.4, 0.25
    loss = make_loss(6, 3, hybridize=hybridize is True, alpha=alpha, weight=weight,
                     ignore_label=-1, dense=dense)
    assert loss.dense is dense
    if hybridize == "static":
        loss.hybridize(static_alloc=True, static_shape=True)
    trainer = loss.trainer()
    ref = np.zeros((6, 3))
    counts = np.zeros(6)
    for x, y in random_batches(5, 16, 3, [-1, 0, 1, 1, 2, 3, 3, 3], seed=1):
        value, grad = run_step(loss, trainer, x, y)
        ref_value, ref_grad = loss_reference(ref, x, y, weight, ignore_label=-1)
        np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
        ref = eq4_reference(ref, x, y, alpha, ignore_label=-1)
        counts += np.bincount(y[y >= 0].astype(int), minlength=6)
        np.testing.assert_allclose(loss.centers.data().asnumpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loss.centers.data().asnumpy()[4:], 0)
    np.testing.assert_array_equal(loss.center_counts.data().asnumpy()[:, 0], counts)


def test_mean_is_weighted_half_mean_squared_distance():
    loss = make_loss(4, 5, weight=0.3)
    loss.centers.set_data(nd.array(np.arange(20).reshape(4, 5) / 10.0))
    rng = np.random.RandomState(2)
    x, y = rng.randn(7, 5), rng.randint(0, 4, 7)
    out = loss(nd.array(x), nd.array(y))
    c = np.arange(20).reshape(4, 5)[y] / 10.0
    expected = 0.3 * 0.5 * ((x - c) ** 2).sum(axis=1).mean()
    assert out.shape == (7,)
    np.testing.assert_allclose(out.mean().asscalar(), expected, rtol=1e-5)


def test_update_ignores_weight_and_network_optimizer():
    # A network trained with lr, momentum and wd next to the loss; lambda = 0.01.
    x, y = random_batches(1, 8, 3, [0, 1, 1, 2], seed=3)[0]
    net = gluon.nn.Dense(3, in_units=3)
    net.initialize(mx.init.Xavier())
    net_trainer = gluon.Trainer(net.collect_params(), "sgd",
                                {"learning_rate": 0.7, "momentum": 0.9, "wd": 0.1})
    loss = make_loss(3, 3, alpha=0.5, weight=0.01)
    loss.centers.set_data(nd.ones((3, 3)))
    start = loss.centers.data().asnumpy()
    trainer = loss.trainer()
    with autograd.record():
        feats = net(nd.array(x))
        out = loss(feats, nd.array(y))
    out.backward()
    feats = feats.asnumpy()
    net_trainer.step(8)
    trainer.step(8)
    np.testing.assert_allclose(loss.centers.data().asnumpy(),
                               eq4_reference(start, feats, y, 0.5), rtol=1e-5, atol=1e-6)


def test_backward_on_sum_of_per_sample_losses_gives_eq4():
    # ce + center summed per sample, backward on the (B,) sum: head gradient 1 each.
    x, y = random_batches(1, 6, 3, [0, 1], seed=4)[0]
    loss = make_loss(2, 3)
    trainer = loss.trainer()
    features = nd.array(x)
    with autograd.record():
        out = loss(features, nd.array(y)) + 0 * features.sum(axis=1)
    autograd.backward([out])
    trainer.step(6)
    np.testing.assert_allclose(loss.centers.data().asnumpy(),
                               eq4_reference(np.zeros((2, 3)), x, y, 0.5), rtol=1e-5, atol=1e-6)


def test_feature_gradient_finite_difference():
    rng = np.random.RandomState(5)
    loss = make_loss(4, 3, weight=0.7)
    loss.centers.set_data(nd.array(rng.randn(4, 3)))
    x = rng.randn(5, 3).astype(np.float64)
    y = np.array([0, 2, 2, 3, 1], np.float32)
    features = nd.array(x)
    features.attach_grad()
    with autograd.record():
        out = loss(features, nd.array(y)).sum()
    out.backward()
    eps = 1e-2
    numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (loss(nd.array(plus), nd.array(y)).sum().asscalar()
                        - loss(nd.array(minus), nd.array(y)).sum().asscalar()) / (2 * eps)
    np.testing.assert_allclose(features.grad.asnumpy(), numeric, rtol=2e-3, atol=2e-3)


def test_centers_gradient_is_row_sparse_and_batch_sized():
    # The scale property: nothing of size K (or B x K) per step in the gradient.
    loss = make_loss(100000, 8, hybridize=True)
    x, y = random_batches(1, 32, 8, np.arange(0, 100000, 997), seed=6)[0]
    with autograd.record():
        out = loss(nd.array(x), nd.array(y))
    out.backward()
    grad = loss.centers.grad()
    assert grad.stype == "row_sparse"
    assert grad.indices.shape[0] == len(np.unique(y)) <= 32
    assert loss.center_counts.grad().stype == "row_sparse"


@pytest.mark.parametrize("hybridize", [False, True])
def test_dense_and_row_sparse_paths_give_identical_centers(hybridize):
    # Small tables default to dense gradients and a fused whole-table update; forcing
    # row_sparse must not change a single bit of the centers or counts, step after
    # step (repeated, absent and ignored classes, and a NaN feature included).
    batches = random_batches(6, 24, 5, [-1, 0, 2, 2, 3, 7, 7, 7], seed=21)
    batches[2][0][4, 1] = np.nan
    losses = [make_loss(9, 5, hybridize=hybridize, alpha=0.35, weight=0.5, ignore_label=-1,
                        dense=dense) for dense in (None, False)]
    assert losses[0].dense and not losses[1].dense
    for loss in losses:
        loss.centers.set_data(nd.array(np.random.RandomState(22).randn(9, 5)))
    trainers = [loss.trainer() for loss in losses]
    for x, y in batches:
        (value_d, grad_d), (value_s, grad_s) = (run_step(loss, trainer, x, y)
                                                for loss, trainer in zip(losses, trainers))
        np.testing.assert_array_equal(value_d, value_s)
        np.testing.assert_array_equal(grad_d, grad_s)
        np.testing.assert_array_equal(losses[0].centers.data().asnumpy(),
                                      losses[1].centers.data().asnumpy())
        np.testing.assert_array_equal(losses[0].center_counts.data().asnumpy(),
                                      losses[1].center_counts.data().asnumpy())
    assert losses[0].centers.grad().stype == "default"
    assert losses[1].centers.grad().stype == "row_sparse"


def test_dense_threshold_picks_the_path(monkeypatch):
    limit = center_module.DENSE_MAX_ELEMENTS
    assert CenterLoss(limit // 4, 4).dense
    assert not CenterLoss(limit // 4 + 1, 4).dense
    assert not CenterLoss(10, 2, dense=False).dense
    assert CenterLoss(100000, 8, dense=True).dense
    monkeypatch.setattr(center_module, "DENSE_MAX_ELEMENTS", 0)
    assert not CenterLoss(10, 2).dense
    with pytest.raises(ValueError, match="dense"):
        CenterLoss(10, 2, dense=1)
    with pytest.raises(ValueError, match="both"):
        center_module.CenterTrainer(make_loss(3, 2, dense=True).centers,
                                    make_loss(3, 2, dense=False).center_counts)


@pytest.mark.parametrize("ignore_label", [None, -1])
def test_no_intermediate_grows_with_batch_times_classes(ignore_label):
    # The scale property of the forward graph, checked on shapes rather than on a
    # clock (bench/bench_center.py times it: K=100000 costs ~1.1x K=1000): apart from
    # the parameters themselves, no intermediate exceeds B x D elements, so nothing
    # is B x K, and nothing is K x D but the table.
    batch, dim, classes = 512, 8, 100000
    loss = CenterLoss(classes, dim, ignore_label=ignore_label)
    graph = loss(mx.sym.var("features"), mx.sym.var("label")).get_internals()
    params = {loss.centers.name: (classes, dim), loss.center_counts.name: (classes, 1)}
    _, shapes, _ = graph.infer_shape(features=(batch, dim), label=(batch,), **params)
    sizes = {name: int(np.prod(shape)) for name, shape in zip(graph.list_outputs(), shapes)}
    inner = {name: size for name, size in sizes.items() if name not in params}
    assert max(inner.values()) == batch * dim
    assert len(inner) > 20  # the whole graph was walked, not just its inputs


def test_batch_axis_one_and_integer_column_labels():
    x, y = random_batches(1, 6, 3, [0, 1, 2], seed=7)[0]
    a, b = make_loss(3, 3), make_loss(3, 3, batch_axis=1)
    ta, tb = a.trainer(), b.trainer()
    va, _ = run_step(a, ta, x, y)
    features = nd.array(x.T)
    with autograd.record():
        vb = b(features, nd.array(y.reshape(-1, 1), dtype="int32"))
    vb.backward()
    tb.step(6)
    np.testing.assert_allclose(vb.asnumpy(), va, rtol=1e-6)
    np.testing.assert_allclose(b.centers.data().asnumpy(), a.centers.data().asnumpy(), rtol=1e-6)


def test_everything_ignored_moves_nothing():
    loss = make_loss(3, 2, ignore_label=255)
    trainer = loss.trainer()
    value, grad = run_step(loss, trainer, np.ones((4, 2), np.float32), np.full(4, 255.0))
    assert not value.any() and not grad.any()
    assert not loss.centers.data().asnumpy().any()
    assert not loss.center_counts.data().asnumpy().any()


# --------------------------------------------- hybridize / export / no sync --

def test_hybridized_and_exported_match_imperative(tmp_path):
    rng = np.random.RandomState(8)
    centers = rng.randn(5, 4).astype(np.float32)
    x = rng.randn(9, 4).astype(np.float32)
    y = np.array([0, 1, 1, 4, -1, 2, 2, 2, 0], np.float32)
    results = []
    for hybridize in (False, True):
        loss = make_loss(5, 4, hybridize=hybridize, weight=0.5, ignore_label=-1)
        loss.centers.set_data(nd.array(centers))
        results.append(loss(nd.array(x), nd.array(y)).asnumpy())
    np.testing.assert_array_equal(results[0], results[1])

    prefix = str(tmp_path / "center")
    loss.export(prefix)
    saved = nd.load(prefix + "-0000.params")
    assert any(k.endswith("centers") for k in saved)
    imported = gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data0", "data1"],
                                         prefix + "-0000.params")
    exported = imported(nd.array(x), nd.array(y)).asnumpy()
    np.testing.assert_allclose(exported, results[0], rtol=1e-6)


def test_no_host_sync_in_hybridized_forward_backward(monkeypatch):
    loss = make_loss(5, 3, hybridize=True, ignore_label=-1)
    x, y = random_batches(1, 8, 3, [-1, 0, 1, 4], seed=9)[0]
    features, label = nd.array(x), nd.array(y)
    loss(features, label).wait_to_read()  # build the graph first

    def refuse(*_):
        raise AssertionError("host synchronization in the forward/backward path")

    monkeypatch.setattr(nd.NDArray, "asnumpy", refuse)
    monkeypatch.setattr(nd.NDArray, "asscalar", refuse)
    features.attach_grad()
    with autograd.record():
        out = loss(features, label)
    out.backward()
    monkeypatch.undo()
    assert np.isfinite(out.asnumpy()).all()


# ------------------------------------------------------------ multi-device --

def _train_on_contexts(contexts, kvstore, batches, dense, alpha=0.5):
    loss = make_loss(7, 4, ctx=contexts, alpha=alpha, ignore_label=-1, dense=dense)
    # A stray copy is overwritten from the first context when the trainer is made.
    if len(contexts) > 1:
        loss.centers.data(contexts[-1])[:] = 1
    trainer = loss.trainer(kvstore=kvstore)
    history = []
    for x, y in batches:
        xs = gluon.utils.split_and_load(nd.array(x), contexts, even_split=False)
        ys = gluon.utils.split_and_load(nd.array(y), contexts, even_split=False)
        with autograd.record():
            outs = [loss(a, b) for a, b in zip(xs, ys)]
        autograd.backward(outs)
        trainer.step(len(y))
        history.append([d.asnumpy() for d in loss.centers.list_data()])
    return history


@DENSE
@pytest.mark.parametrize("kvstore", ["device", "local"])
def test_multi_context_copies_identical_and_equal_to_single(kvstore, dense):
    # Class 5 only ever lands on cpu(1): the counts must be global, not per device.
    batches = random_batches(4, 10, 4, [-1, 0, 0, 1, 2, 3], seed=10)
    for x, y in batches:
        y[-2:] = 5
    multi = _train_on_contexts([mx.cpu(0), mx.cpu(1)], kvstore, batches, dense)
    single = _train_on_contexts([mx.cpu(0)], kvstore, batches, dense)
    ref = np.zeros((7, 4))
    for (x, y), copies, (one,) in zip(batches, multi, single):
        ref = eq4_reference(ref, x, y, 0.5, ignore_label=-1)
        np.testing.assert_array_equal(copies[0], copies[1])
        np.testing.assert_allclose(copies[0], one, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(copies[0], ref, rtol=1e-5, atol=1e-6)


@DENSE
def test_allreduce_hook_for_horovod_style_data_parallelism(dense):
    # Stand-in for hvd.allreduce_(a, average=False) with two workers holding the same
    # half batch: the sum is twice the local array, i.e. the batch seen twice.
    batches = random_batches(3, 8, 4, [-1, 0, 1, 1, 3], seed=13)
    loss = make_loss(7, 4, alpha=0.5, ignore_label=-1, dense=dense)
    shapes = []

    def allreduce(array):
        shapes.append(array.shape)
        array *= 2

    trainer = loss.trainer(allreduce=allreduce)
    ref = np.zeros((7, 4))
    for x, y in batches:
        run_step(loss, trainer, x, y)
        ref = eq4_reference(ref, np.concatenate([x, x]), np.concatenate([y, y]), 0.5,
                            ignore_label=-1)
        np.testing.assert_allclose(loss.centers.data().asnumpy(), ref, rtol=1e-5, atol=1e-6)
    # Counts first, then the numerator: whole tables (dense) or a block of rows.
    assert shapes[:2] == [(7, 1), (7, 4) if dense else (16, 4)]
    with pytest.raises(ValueError, match="allreduce"):
        loss.trainer(allreduce="hvd")


# ------------------------------------------------------------- dist_sync --

@skip_unless_dist
@DENSE
def test_dist_sync_loopback_workers_identical_and_equal_to_single(tmp_path, dense):
    # Run from ROOT, which python -m / -c put on sys.path (tests/ is a namespace package).
    # The worker's table is small (dense by default); the row_sparse run lowers the
    # threshold to 0 before running the same module.
    assert dist_worker.NUM_CLASSES * dist_worker.FEATURE_DIM <= center_module.DENSE_MAX_ELEMENTS
    args = ["-m", "tests.dist_center_worker"] if dense else [
        "-c", "import runpy; import gluon_losses.center as c; c.DENSE_MAX_ELEMENTS = 0; "
              "runpy.run_module('tests.dist_center_worker', run_name='__main__')"]
    run_dist_sync(args + [str(tmp_path)], cwd=ROOT)

    ref = np.zeros((dist_worker.NUM_CLASSES, dist_worker.FEATURE_DIM))
    counts = np.zeros(dist_worker.NUM_CLASSES)
    for step, (x, y) in enumerate(dist_worker.batches()):
        ref = eq4_reference(ref, x, y, dist_worker.ALPHA, ignore_label=-1)
        counts += np.bincount(y[y >= 0].astype(int), minlength=dist_worker.NUM_CLASSES)
        w0, w1 = (np.load(str(tmp_path / ("centers_rank%d_step%d.npy" % (r, step))))
                  for r in (0, 1))
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_allclose(w0, ref, rtol=1e-5, atol=1e-6)
    for r in (0, 1):
        np.testing.assert_array_equal(np.load(str(tmp_path / ("counts_rank%d.npy" % r)))[:, 0],
                                      counts)
    # The network's trainer on the same kvstore: d(sum of outputs)/dW is the feature
    # sum for every output unit, so SGD moves each row by lr * sum(x) / B per step.
    feature_sum = sum(x.sum(axis=0) for x, _ in dist_worker.batches())
    expected = 0.1 - 0.1 * np.tile(feature_sum, (3, 1)) / dist_worker.BATCH
    for r in (0, 1):
        np.testing.assert_allclose(np.load(str(tmp_path / ("net_rank%d.npy" % r))), expected,
                                   rtol=1e-5, atol=1e-6)


# ----------------------------------------------------- state, NaN, errors --

@DENSE
def test_save_load_mid_training_resumes_identically(tmp_path, dense):
    batches = random_batches(4, 12, 3, [0, 1, 2, 2, 4], seed=11)
    loss = make_loss(5, 3, alpha=0.3, dense=dense)
    trainer = loss.trainer()
    for x, y in batches[:2]:
        run_step(loss, trainer, x, y)
    path = str(tmp_path / "center.params")
    loss.save_parameters(path)
    resumed = CenterLoss(5, 3, alpha=0.3, dense=dense)
    resumed.load_parameters(path, ctx=mx.cpu())
    resumed_trainer = resumed.trainer()
    # Trainer states round-trip too (checkpoint code saves every trainer alike).
    trainer.save_states(str(tmp_path / "center.states"))
    resumed_trainer.load_states(str(tmp_path / "center.states"))
    np.testing.assert_array_equal(resumed.center_counts.data().asnumpy(),
                                  loss.center_counts.data().asnumpy())
    for x, y in batches[2:]:
        run_step(loss, trainer, x, y)
        run_step(resumed, resumed_trainer, x, y)
        np.testing.assert_array_equal(resumed.centers.data().asnumpy(),
                                      loss.centers.data().asnumpy())


@DENSE
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("hybridize", [False, True])
def test_non_finite_features_never_reach_the_centers(bad, hybridize, dense):
    loss = make_loss(3, 2, hybridize=hybridize, dense=dense)
    trainer = loss.trainer()
    x = np.array([[1, 2], [bad, 0], [3, 4], [5, 6]], np.float32)
    y = np.array([0, 1, 1, 2], np.float32)
    value, _ = run_step(loss, trainer, x, y)
    assert np.isnan(value[1]) or np.isinf(value[1])
    assert np.isnan(value.mean()) or np.isinf(value.mean())
    centers = loss.centers.data().asnumpy()
    assert np.isfinite(centers).all()
    # The bad sample is left out of Eq. 4 (and of n_1); class 1 follows its other sample.
    ref = eq4_reference(np.zeros((3, 2)), x[[0, 2, 3]], y[[0, 2, 3]], 0.5)
    np.testing.assert_allclose(centers, ref, rtol=1e-6)
    np.testing.assert_array_equal(loss.center_counts.data().asnumpy()[:, 0], [1, 1, 1])


@DENSE
@pytest.mark.parametrize("kvstore", ["device", "local"])
def test_non_finite_features_on_one_device_keep_copies_finite_and_equal(kvstore, dense):
    contexts = [mx.cpu(0), mx.cpu(1)]
    loss = make_loss(3, 2, ctx=contexts, dense=dense)
    trainer = loss.trainer(kvstore=kvstore)
    x = np.array([[1, 2], [3, 4], [np.nan, 0], [5, 6]], np.float32)
    y = np.array([0, 1, 2, 1], np.float32)  # class 2 has only the bad sample
    xs = gluon.utils.split_and_load(nd.array(x), contexts)
    ys = gluon.utils.split_and_load(nd.array(y), contexts)
    with autograd.record():
        outs = [loss(a, b) for a, b in zip(xs, ys)]
    autograd.backward(outs)
    trainer.step(4)
    copies = [d.asnumpy() for d in loss.centers.list_data()]
    np.testing.assert_array_equal(copies[0], copies[1])
    ref = eq4_reference(np.zeros((3, 2)), x[[0, 1, 3]], y[[0, 1, 3]], 0.5)
    np.testing.assert_allclose(copies[0], ref, rtol=1e-6)
    np.testing.assert_array_equal(loss.center_counts.data(mx.cpu(1)).asnumpy()[:, 0], [1, 2, 0])
    assert np.isnan(outs[1].asnumpy()[0])


def test_nan_loss_on_bad_label_in_hybridized_graph():
    loss = make_loss(3, 2, hybridize=True, ignore_label=-1)
    loss(nd.ones((2, 2)), nd.array([0, 1])).wait_to_read()
    out = loss(nd.ones((3, 2)), nd.array([0, 3, -1])).asnumpy()
    assert np.isfinite(out[0]) and np.isnan(out[1]) and out[2] == 0


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_classes=0, feature_dim=2), "num_classes"),
    (dict(num_classes=2.5, feature_dim=2), "num_classes"),
    (dict(num_classes=3, feature_dim=0), "feature_dim"),
    (dict(num_classes=3, feature_dim=2, alpha=0.0), "alpha"),
    (dict(num_classes=3, feature_dim=2, alpha=1.5), "alpha"),
    (dict(num_classes=3, feature_dim=2, alpha=-0.1), "alpha"),
    (dict(num_classes=3, feature_dim=2, alpha=float("nan")), "alpha"),
    (dict(num_classes=3, feature_dim=2, ignore_label=0.5), "ignore_label"),
    (dict(num_classes=3, feature_dim=2, batch_axis=2), "batch_axis"),
])
def test_bad_construction_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CenterLoss(**kwargs)


def test_alpha_one_is_allowed():
    assert CenterLoss(3, 2, alpha=1).alpha == 1.0


@pytest.mark.parametrize("features, label, match", [
    (np.ones((4, 3)), [0, 1, 2, 0], "feature_dim=2"),
    (np.ones((4,)), [0, 1, 2, 0], "features must be 2-D"),
    (np.ones((4, 2, 1)), [0, 1, 2, 0], "features must be 2-D"),
    (np.ones((4, 2)), [0, 1, 2], "label"),
    (np.ones((4, 2)), [0, 1, 3, 0], "label contains 3"),
    (np.ones((4, 2)), [0, -1, 2, 0], "label contains -1"),
    (np.ones((4, 2)), [0, 1.5, 2, 0], "label contains 1.5"),
])
def test_bad_inputs_raise_naming_the_argument(features, label, match):
    loss = make_loss(3, 2)
    with pytest.raises(ValueError, match=match):
        loss(nd.array(features), nd.array(label))


def test_shape_errors_also_raise_when_hybridized():
    loss = make_loss(3, 2, hybridize=True)
    loss(nd.ones((4, 2)), nd.array([0, 1, 2, 0])).wait_to_read()
    with pytest.raises(ValueError, match="feature_dim=2"):
        loss(nd.ones((4, 3)), nd.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="features must be 2-D"):
        loss(nd.ones((4, 2, 1)), nd.array([0, 1, 2, 0]))


def test_uninitialized_and_misused_trainer():
    with pytest.raises(RuntimeError, match="initialize"):
        CenterLoss(3, 2)(nd.ones((1, 2)), nd.array([0]))
    loss = make_loss(3, 2)
    with pytest.raises(ValueError, match="update_on_kvstore"):
        loss.trainer(update_on_kvstore=True)
    with pytest.raises(ValueError, match="alpha"):
        loss.trainer(alpha=2.0)
    for kvstore in ("dist_async", "nccl", 3):
        with pytest.raises(ValueError, match="kvstore"):
            loss.trainer(kvstore=kvstore)
    with pytest.raises(ValueError, match="compression_params"):
        loss.trainer(compression_params={"type": "2bit"})
    trainer = loss.trainer()
    with pytest.raises(UserWarning, match="backward"):
        trainer.step(1)
    trainer.step(1, ignore_stale_grad=True)
    assert not loss.centers.data().asnumpy().any()


# ------------------------------------------------- with softmax cross-entropy --

class _FeatureNet(gluon.HybridBlock):
    def __init__(self, feature_dim, num_classes, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embed = gluon.nn.Dense(feature_dim, in_units=5)
            self.classify = gluon.nn.Dense(num_classes, in_units=feature_dim)

    def hybrid_forward(self, F, x):
        feats = self.embed(x)
        return feats, self.classify(feats)


@pytest.mark.parametrize("hybridize", [False, True])
def test_joint_training_with_weighted_softmax_ce(hybridize):
    num_classes, feature_dim, batch = 4, 3, 10
    rng = np.random.RandomState(12)
    net = _FeatureNet(feature_dim, num_classes)
    net.initialize(mx.init.Xavier())
    ce = WeightedSoftmaxCELoss(class_weight=[1.0, 2.0, 1.0, 0.5])
    center = make_loss(num_classes, feature_dim, alpha=0.5, weight=0.1, ignore_label=-1)
    if hybridize:
        net.hybridize()
        ce.hybridize()
        center.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    center_trainer = center.trainer()
    ref = np.zeros((num_classes, feature_dim))
    for _ in range(3):
        x = nd.array(rng.randn(batch, 5))
        y = nd.array(rng.randint(-1, 3, batch))
        with autograd.record():
            feats, logits = net(x)
            total = ce(logits, y) + center(feats, y)
        total.backward()
        grad_before = net.embed.weight.grad().asnumpy().copy()
        trainer.step(batch)
        center_trainer.step(batch)
        ref = eq4_reference(ref, feats.asnumpy(), y.asnumpy(), 0.5, ignore_label=-1)
        np.testing.assert_allclose(center.centers.data().asnumpy(), ref, rtol=1e-5, atol=1e-6)
        assert np.abs(grad_before).sum() > 0
        assert np.isfinite(total.asnumpy()).all()


@pytest.mark.parametrize("hybridize", [False, True])
def test_labels_from_a_recorded_graph_need_no_detach(hybridize):
    """Embedding must not be asked for a gradient of labels that a network produced."""
    net = OutputsAndLabels()
    net.hybridize()
    loss = make_loss(3, 3, hybridize=hybridize, alpha=0.5)
    trainer = loss.trainer()
    x = nd.array(np.random.RandomState(25).uniform(-3, 3, (4, 3)))
    x.attach_grad()
    with autograd.record():
        features, label = net(x)
        out = loss(features, label)
    out.backward()
    trainer.step(4)
    y = np.arange(4) % 3
    expected = eq4_reference(np.zeros((3, 3)), 2 * x.asnumpy(), y, 0.5)
    np.testing.assert_allclose(loss.centers.data().asnumpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x.grad.asnumpy(), 2 * 2 * x.asnumpy(), rtol=1e-6)


# ------------------------------------------------------------- properties --

@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 40)) // 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_matches_float64_eq4_over_repeated_steps(data):
    """float16/32/64 features, K and D from 1, ignored and repeated labels, weight 0
    included, both storage paths, imperative and hybridized: loss, feature gradient and
    centers against float64 NumPy over several steps of Eq. 4."""
    dtype = data.draw(st.sampled_from(["float16", "float32", "float64"]), label="dtype")
    num_classes = data.draw(st.integers(1, 5), label="K")
    feature_dim = data.draw(st.integers(1, 4), label="D")
    batch = data.draw(st.integers(1, 9), label="B")
    alpha = data.draw(st.sampled_from([0.05, 0.5, 1.0]), label="alpha")
    weight = data.draw(st.sampled_from([0.0, 0.3, 2.0]), label="weight")
    ignore_label = data.draw(st.sampled_from([None, -1]), label="ignore_label")
    dense = data.draw(st.booleans(), label="dense")
    hybridize = data.draw(st.booleans(), label="hybridize")
    scale = data.draw(st.sampled_from([1.0, 100.0]), label="scale")
    rng = np.random.RandomState(data.draw(st.integers(0, 10 ** 6), label="seed"))
    loss = make_loss(num_classes, feature_dim, hybridize=hybridize, alpha=alpha,
                     weight=weight, ignore_label=ignore_label, dense=dense)
    trainer = loss.trainer()
    centers = np.zeros((num_classes, feature_dim))
    lowest = 0 if ignore_label is None else -1
    for _ in range(3):
        x = (rng.randn(batch, feature_dim) * scale).astype(dtype)
        y = rng.randint(lowest, num_classes, size=batch).astype(np.float32)
        features = nd.array(x, dtype=dtype)
        features.attach_grad()
        with autograd.record():
            out = loss(features, nd.array(y))
        out.backward()
        trainer.step(batch)
        x64 = x.astype(np.float64)   # float16 and float32 are exact in float64
        if dtype == "float64":       # computed in float32, the centers' dtype
            x64 = x.astype(np.float32).astype(np.float64)
        value, grad = loss_reference(centers, x64, y, weight, ignore_label=ignore_label)
        centers = eq4_reference(centers, x64, y, alpha, ignore_label=ignore_label)
        atol = 1e-5 * scale ** 2
        np.testing.assert_allclose(out.asnumpy(), value, rtol=1e-4, atol=atol)
        assert features.grad.dtype == np.dtype(dtype)
        np.testing.assert_allclose(features.grad.asnumpy().astype(np.float64), grad,
                                   rtol=2e-3 if dtype == "float16" else 1e-5,
                                   atol=2e-3 * scale if dtype == "float16" else 1e-5 * scale)
        np.testing.assert_allclose(loss.centers.data().asnumpy(), centers, rtol=1e-5,
                                   atol=1e-5 * scale)


def test_trainer_states_keep_alpha_and_read_the_older_trainer_files(tmp_path):
    """save_states/load_states carry alpha; a file gluon.Trainer.save_states wrote (the
    older CenterTrainer was one) loads and changes nothing."""
    loss = make_loss(5, 3, alpha=0.3, dense=True)
    trainer = loss.trainer()
    trainer.alpha = 0.7
    trainer.save_states(str(tmp_path / "center.states"))
    resumed = make_loss(5, 3, alpha=0.3, dense=True).trainer()
    resumed.load_states(str(tmp_path / "center.states"))
    assert resumed.alpha == 0.7
    param = mx.gluon.Parameter("w", shape=(2,))
    param.initialize()
    mx.gluon.Trainer([param], "sgd", {"learning_rate": 0.1}).save_states(
        str(tmp_path / "old.states"))
    resumed.load_states(str(tmp_path / "old.states"))
    assert resumed.alpha == 0.7
