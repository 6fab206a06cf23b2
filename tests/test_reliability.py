"""Edge behaviour of both losses: each test holds one item of the reliability issue.

The promises these tests hold are listed in docs/reliability.md.
"""
import itertools
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import CenterLoss, WeightedSoftmaxCELoss
from gluon_losses import center_trainer as center_trainer_module
from gluon_losses import center_update, fused
from examples.common import TMP_PREFIX, load_checkpoint, save_checkpoint
import reference
from reference import run_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLOAT32_MAX = float(np.finfo(np.float32).max)


# --- 1. focal loss in the log domain ----------------------------------------------------

def focal_batch():
    """Logit gaps from 0 to 1e4 over 3 classes, the label on the top class and off it."""
    rows, labels = [], []
    for gap in [0.0, 0.5, 3.0, 30.0, 100.0, 200.0, 1000.0, 1e4]:
        rows.append([0.0, -gap, -gap / 2])
        labels.append(0)     # confident and right: 1 - p_t far below float32's range
        rows.append([0.0, -gap, -gap / 2])
        labels.append(2)     # wrong
    return np.array(rows, np.float32), np.array(labels, np.float32)


@pytest.mark.parametrize("gamma", [0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.5])
@pytest.mark.parametrize("hybridize", [False, True])
def test_focal_factor_in_log_domain_matches_float64(gamma, label_smoothing, hybridize):
    pred, label = focal_batch()
    loss_fn = WeightedSoftmaxCELoss(gamma=gamma, label_smoothing=label_smoothing,
                                    normalization="none")
    if hybridize:
        loss_fn.hybridize()
    value, grad = run_loss(loss_fn, pred, label)
    kwargs = dict(gamma=gamma, label_smoothing=label_smoothing, normalization="none")
    expected = reference.softmax_ce(pred, label, **kwargs)
    # MXNet's float32 log_softmax is within about 1e-6 of log p_t.
    np.testing.assert_allclose(value, expected, rtol=2e-5, atol=3e-6)
    numeric = reference.reference_grad(pred, label, step=1e-4, **kwargs)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("pred, gamma, label_smoothing, expected", [
    ([[0.0, -200.0]], 0.05, 0.5, 0.0022700),   # the issue's repro: 1.5811387 before
    ([[0.0, -100.0]], 0.1, 0.5, 0.0011350),    # 0.025 before
    ([[0.0, -1000.0]], 0.01, 0.5, 0.0113500),  # 125.3 before
])
def test_focal_issue_repros(pred, gamma, label_smoothing, expected):
    pred = np.array(pred, np.float32)
    value, _ = run_loss(WeightedSoftmaxCELoss(label_smoothing=label_smoothing,
                                                    gamma=gamma), pred, np.array([0]))
    reference_value = reference.softmax_ce(pred, [0], label_smoothing=label_smoothing,
                                           gamma=gamma)
    np.testing.assert_allclose(reference_value, expected, rtol=1e-4)
    np.testing.assert_allclose(value, reference_value, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.01, 2.0])
def test_focal_from_log_probabilities_equals_focal_from_logits(gamma):
    pred, label = focal_batch()
    log_prob = reference.log_softmax(pred.astype(np.float64)).astype(np.float32)
    kwargs = dict(gamma=gamma, label_smoothing=0.5, normalization="none")
    from_logits, _ = run_loss(WeightedSoftmaxCELoss(from_logits=True, **kwargs),
                                    log_prob, label)
    np.testing.assert_allclose(from_logits, reference.softmax_ce(pred, label, **kwargs),
                               rtol=2e-5, atol=3e-6)


@pytest.mark.parametrize("gamma", [0.01, 2.0])
def test_focal_dense_labels_in_log_domain(gamma):
    pred, label = focal_batch()
    target = np.eye(3, dtype=np.float32)[label.astype(int)] * 0.7 + 0.1
    loss_fn = WeightedSoftmaxCELoss(gamma=gamma, sparse_label=False, normalization="none")
    value, grad = run_loss(loss_fn, pred, target)
    kwargs = dict(gamma=gamma, sparse_label=False, normalization="none")
    np.testing.assert_allclose(value, reference.softmax_ce(pred, target, **kwargs), rtol=2e-5,
                               atol=3e-6)
    numeric = reference.reference_grad(pred, target, step=1e-4, **kwargs)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=2e-5)


# --- 2. non-integer labels ---------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
def test_non_integer_label_is_nan_in_graph_and_an_error_imperatively(weighted):
    class_weight = [1.0, 2.0, 3.0] if weighted else None
    hybrid = WeightedSoftmaxCELoss(class_weight, normalization="none")
    hybrid.hybridize()
    pred = np.random.RandomState(0).randn(3, 3).astype(np.float32)
    value, grad = run_loss(hybrid, pred, np.array([0, 1.5, 2]))
    assert np.isnan(value[1]) and np.all(np.isfinite(value[[0, 2]]))
    with pytest.raises(ValueError, match=r"label contains 1.5, which is not an integer"):
        WeightedSoftmaxCELoss(class_weight)(nd.array(pred), nd.array([0, 1.5, 2]))


@pytest.mark.parametrize("dense", [True, False])
def test_center_loss_non_integer_label_is_nan_and_moves_no_center(dense):
    loss = CenterLoss(3, 2, alpha=0.5, dense=dense)
    loss.initialize()
    loss.hybridize()
    trainer = loss.trainer()
    x = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    with autograd.record():
        out = loss(nd.array(x), nd.array([0.5, 1]))
    out.backward()
    trainer.step(2)
    assert np.isnan(out.asnumpy()[0]) and np.isfinite(out.asnumpy()[1])
    expected = reference.eq4_reference(np.zeros((3, 2)), x[1:], np.array([1]), 0.5)
    np.testing.assert_array_equal(loss.centers.data().asnumpy()[0], 0)
    np.testing.assert_allclose(loss.centers.data().asnumpy(), expected, rtol=5e-6)
    np.testing.assert_array_equal(loss.center_counts.data().asnumpy()[:, 0], [0, 1, 0])


# --- 3. CenterLoss on float16 and float64 features ---------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("hybridize", [False, True])
def test_center_loss_float16_and_float64_features(dtype, hybridize):
    rng = np.random.RandomState(1)
    x = rng.randn(6, 3).astype(dtype)
    y = np.array([0, 1, 1, 2, 0, 3], np.float32)
    results = []
    for features in (x, x.astype(np.float32)):
        loss = CenterLoss(4, 3, alpha=0.5, weight=0.5)
        loss.initialize()
        if hybridize:
            loss.hybridize()
        trainer = loss.trainer()
        steps = []
        for _ in range(2):
            f = nd.array(features, dtype=features.dtype)
            f.attach_grad()
            with autograd.record():
                out = loss(f, nd.array(y))
            out.backward()
            trainer.step(6)
            assert f.grad.dtype == features.dtype and out.dtype == np.float32
            steps.append((out.asnumpy(), f.grad.asnumpy().astype(np.float32),
                          loss.centers.data().asnumpy()))
        results.append(steps)
    # float64 features are rounded to float32 on the way in; float16 ones are exact in it.
    for ours, float32s in zip(*results):
        for a, b in zip(ours, float32s):
            np.testing.assert_allclose(a, b, rtol=1e-3 if dtype == "float16" else 1e-6,
                                       atol=1e-3 if dtype == "float16" else 1e-7)


# --- 4. positions that carry no weight are exactly 0 --------------------------------------

HUGE = np.array([[-2e38, 2e38], [0.0, 0.0]], np.float32)


@pytest.mark.parametrize("case", ["ignored", "all_ignored", "sample_weight_0", "weight_0",
                                  "class_weight_0", "smoothing_over_-2e38", "dense_target_0"])
@pytest.mark.parametrize("hybridize", [False, True])
def test_positions_without_weight_are_exactly_zero(case, hybridize):
    kwargs, args, pred = {}, [np.array([-1, 1])], HUGE
    if case == "all_ignored":
        pred, args = HUGE[:1], [np.array([-1])]
    elif case == "sample_weight_0":
        args = [np.array([0, 1]), np.array([0.0, 1.0])]
    elif case == "weight_0":
        kwargs, args = dict(weight=0.0), [np.array([0, 1])]
    elif case == "class_weight_0":
        kwargs, args = dict(class_weight=[0.0, 1.0]), [np.array([0, 1])]
    elif case == "smoothing_over_-2e38":
        kwargs, pred = dict(label_smoothing=0.5), np.array([[0.0, -2e38, -2e38]], np.float32)
        args = [np.array([0])]
    elif case == "dense_target_0":
        kwargs, args = dict(sparse_label=False), [np.array([[0.0, 1.0], [0.5, 0.5]])]
    loss_fn = WeightedSoftmaxCELoss(normalization="none", **kwargs)
    if hybridize:
        loss_fn.hybridize()
    value, grad = run_loss(loss_fn, pred, *args)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (value, grad)
    if case == "smoothing_over_-2e38":
        # The true value, 0.5 * 4e38 / 3, fits in float32: it must come out finite.
        np.testing.assert_allclose(value, [0.5 * 4e38 / 3],
                                   rtol=1e-6 if fused.available() else 5e-6)
        if fused.available():
            # The fused path computes p - onehot directly: the gradient is exact too.
            np.testing.assert_allclose(grad, [[1 - 0.5 - 0.5 / 3, -0.5 / 3, -0.5 / 3]],
                                       rtol=1e-6)
            assert np.all(grad.sum(axis=1) == pytest.approx(0.0, abs=1e-7))
        return
    if case == "dense_target_0":
        # Row 0 has p = 1 on its target: its loss is 0 up to MXNet's float32 log_softmax.
        np.testing.assert_allclose(value, [0.0, np.log(2)], rtol=5e-6, atol=2e-6)
        return
    weighted = np.array([False] + [True] * (len(value) - 1)) if case != "weight_0" else \
        np.zeros(len(value), bool)
    assert np.all(value[~weighted] == 0) and np.all(grad[~weighted] == 0)
    np.testing.assert_allclose(value[weighted], np.log(2), rtol=5e-6)


@pytest.mark.parametrize("normalization", ["valid", "batch", "weight", "null"])
def test_issue_repro_with_reductions(normalization):
    loss_fn = WeightedSoftmaxCELoss(normalization=normalization)
    value, grad = run_loss(loss_fn, HUGE, np.array([-1, 1]))
    expected = reference.softmax_ce(HUGE, [-1, 1], normalization=normalization)
    np.testing.assert_allclose(value, expected, rtol=5e-6)
    assert value[0] == 0 and np.all(grad[0] == 0) and np.all(np.isfinite(grad))
    value, _ = run_loss(loss_fn, HUGE[:1], np.array([-1]))
    assert value.tolist() == [0.0]


def test_center_loss_weight_zero_is_exactly_zero_for_huge_features():
    loss = CenterLoss(2, 2, weight=0.0)
    loss.initialize()
    trainer = loss.trainer()
    x = nd.array([[3e38, -3e38], [1.0, 2.0]])
    x.attach_grad()
    with autograd.record():
        out = loss(x, nd.array([0, 1]))
    out.backward()
    trainer.step(2)
    assert out.asnumpy().tolist() == [0.0, 0.0]
    assert np.all(x.grad.asnumpy() == 0)
    # Eq. 4 does not depend on the loss weight: the centers still move.
    expected = reference.eq4_reference(np.zeros((2, 2)), x.asnumpy(), np.array([0, 1]), 0.5)
    np.testing.assert_allclose(loss.centers.data().asnumpy(), expected, rtol=5e-6)


# --- 7. NumPy and list inputs ------------------------------------------------------------

def test_numpy_and_list_inputs_equal_ndarray_inputs():
    pred = np.random.RandomState(2).randn(4, 3).astype(np.float32)
    label = np.array([0, 2, -1, 1])
    sample_weight = np.array([1.0, 0.5, 2.0, 1.0])
    loss_fn = WeightedSoftmaxCELoss([1.0, 2.0, 3.0])
    expected = loss_fn(nd.array(pred), nd.array(label), nd.array(sample_weight)).asnumpy()
    for args in [(pred, label, sample_weight), (pred.tolist(), label.tolist(),
                                                 sample_weight.tolist()),
                 (nd.array(pred), label, sample_weight.tolist())]:
        out = loss_fn(*args)
        assert isinstance(out, nd.NDArray)
        np.testing.assert_array_equal(out.asnumpy(), expected)
    center = CenterLoss(3, 3)
    center.initialize()
    expected = center(nd.array(pred), nd.array([0, 2, 1, 1])).asnumpy()
    np.testing.assert_array_equal(center(pred, [0, 2, 1, 1]).asnumpy(), expected)
    np.testing.assert_array_equal(center(pred.astype(np.float64), np.array([0, 2, 1, 1]))
                                  .asnumpy(), expected)


# --- 8. sample weights and 'weight' normalization -----------------------------------------

@pytest.mark.parametrize("pred_shape, axis, sample_shape", [
    ((3, 4, 2, 2), 1, (3, 1, 1, 1)),
    ((3, 4, 2, 2), 1, (1, 1, 1, 1)),
    ((3, 4, 2, 2), 1, (1,)),
    ((3, 5, 4), -1, (3, 1, 1)),
    ((3, 5, 4), -1, (1, 5, 1)),
    ((3, 5, 4), -1, (3, 5, 1)),
    ((6, 4), -1, (6, 1)),
])
def test_every_sample_weight_shape_gluon_accepts_means_what_it_means_in_gluon(
        pred_shape, axis, sample_shape):
    rng = np.random.RandomState(3)
    pred = rng.randn(*pred_shape).astype(np.float32)
    label_shape = tuple(s for i, s in enumerate(pred_shape) if i != axis % len(pred_shape))
    label = rng.randint(0, pred_shape[axis], size=label_shape).astype(np.float32)
    sample_weight = rng.uniform(0.1, 2.0, size=sample_shape).astype(np.float32)
    ours, our_grad = run_loss(
        WeightedSoftmaxCELoss(axis=axis, normalization="batch"), pred, label, sample_weight)
    gluons, gluon_grad = run_loss(gluon.loss.SoftmaxCrossEntropyLoss(axis=axis), pred,
                                        label, sample_weight)
    np.testing.assert_allclose(ours, gluons, rtol=1e-5)
    np.testing.assert_allclose(our_grad, gluon_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hybridize", [False, True])
def test_negative_sample_weights_divide_by_the_total_magnitude(hybridize):
    pred = np.random.RandomState(4).randn(4, 3).astype(np.float32)
    label = np.array([0, 1, 2, -1], np.float32)
    sample_weight = np.array([1.0, -1.0, 0.5, -3.0], np.float32)
    loss_fn = WeightedSoftmaxCELoss([1.0, 2.0, 0.5], normalization="weight")
    if hybridize:
        loss_fn.hybridize()
    value, grad = run_loss(loss_fn, pred, label, sample_weight)
    log_prob = reference.log_softmax(pred.astype(np.float64))
    nll = -log_prob[np.arange(3), [0, 1, 2]]
    w = np.array([1.0, 2.0, 0.5]) * sample_weight[:3]
    total = np.abs(w).sum()   # 1 + 2 + 0.25; the signed sum, 1 - 2 + 0.25, is negative
    # The fused path sums in float64; the graph's float32 log_softmax errs by ~2e-6.
    np.testing.assert_allclose(value[:3], 4 * w * nll / total,
                               rtol=2e-6 if fused.available() else 5e-6)
    assert value[3] == 0
    np.testing.assert_allclose(value, reference.softmax_ce(
        pred, label, class_weight=[1.0, 2.0, 0.5], sample_weight=sample_weight,
        normalization="weight"), rtol=5e-6)
    assert np.all(np.isfinite(grad))


def test_ignore_label_has_no_effect_on_dense_labels():
    pred = np.random.RandomState(5).randn(3, 4).astype(np.float32)
    target = np.array([[0, 1, 0, 0], [0.25, 0.25, 0.5, 0], [0, 0, 0, 0]], np.float32)
    values = [run_loss(WeightedSoftmaxCELoss(sparse_label=False, ignore_label=ignore,
                                                   normalization="none"), pred, target)[0]
              for ignore in (-1, 0, 1, None)]
    for value in values[1:]:
        np.testing.assert_array_equal(value, values[0])
    np.testing.assert_allclose(values[0], reference.softmax_ce(
        pred, target, sparse_label=False, normalization="none"), rtol=5e-6)
    assert values[0][2] == 0   # an all-zero target row is how a dense position is left out


# --- 10. CenterTrainer: alpha schedules and the kvstore key range -------------------------

@pytest.mark.parametrize("dense", [True, False])
def test_alpha_schedule_reuses_one_graph(dense):
    loss = CenterLoss(5, 3, ignore_label=-1, dense=dense)
    loss.initialize()
    loss.hybridize()
    trainer = loss.trainer()
    caches = (center_update._DENSE_EQ4_OPS, center_update._EQ4_OPS, center_update._ALPHAS)
    rng = np.random.RandomState(6)
    ref = np.zeros((5, 3))
    for step in range(50):
        trainer.alpha = 0.9 * 0.97 ** step
        x = rng.randn(8, 3).astype(np.float32)
        y = rng.randint(-1, 5, 8).astype(np.float32)
        with autograd.record():
            out = loss(nd.array(x), nd.array(y))
        out.backward()
        trainer.step(8)
        ref = reference.eq4_reference(ref, x, y, trainer.alpha, ignore_label=-1)
        if step == 0:
            graphs = [dict(c) for c in caches[:2]]
    np.testing.assert_allclose(loss.centers.data().asnumpy(), ref, rtol=1e-5, atol=1e-6)
    # No graph was built after the first step, and the alpha arrays stay bounded.
    assert [dict(c) for c in caches[:2]] == graphs
    assert len(caches[2]) <= center_update.CACHE_SIZE


def test_kvstore_key_range_is_checked_before_it_overflows(monkeypatch):
    limit = center_trainer_module.MAX_SHARED_TRAINERS
    last_key = center_trainer_module._KEY_BASE + center_trainer_module._KEYS_PER_TRAINER * limit - 1
    assert last_key * 9973 < 2 ** 31   # ps-lite's int arithmetic on keys
    loss = CenterLoss(3, 2)
    loss.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    kv = mx.kv.create("local")
    monkeypatch.setattr(center_trainer_module, "_TRAINER_NUMBERS", itertools.count(limit - 1))
    loss.trainer(kvstore=kv)   # the last one that fits
    with pytest.raises(RuntimeError, match="%d CenterTrainers" % limit):
        loss.trainer(kvstore=kv)
    # Trainers with a kvstore of their own use no shared key.
    loss.trainer(kvstore="device")


# --- the bad-input table: one row per bad input of the issue ------------------------------

def _loss_call(loss_kwargs=None, pred=((0.0, 1.0), (1.0, 0.0)), label=(0, 1), *sample_weight):
    def run():
        WeightedSoftmaxCELoss(**(loss_kwargs or {}))(
            pred if isinstance(pred, nd.NDArray) else nd.array(pred), nd.array(label),
            *sample_weight)
    return run


def _center(**kwargs):
    def run():
        loss = CenterLoss(3, 2, **kwargs.pop("loss", {}))
        loss.initialize()
        loss(*kwargs["inputs"])
    return run


def _hybridized(block):
    block.hybridize()
    return block


def _sample_weight_once_then_not():
    loss_fn = WeightedSoftmaxCELoss()
    loss_fn.hybridize()
    loss_fn(nd.zeros((2, 3)), nd.zeros((2,)), nd.ones((2,)))
    loss_fn(nd.zeros((2, 3)), nd.zeros((2,)))


BAD_INPUTS = [
    # 5. values MXNet's float32 scalars cannot hold
    ("gamma", "1e-320", lambda: WeightedSoftmaxCELoss(gamma=1e-320)),
    ("label_smoothing", "1e-320", lambda: WeightedSoftmaxCELoss(label_smoothing=1e-320)),
    ("weight", "1e-320", lambda: WeightedSoftmaxCELoss(weight=1e-320)),
    ("weight", "1e+39", lambda: WeightedSoftmaxCELoss(weight=1e39)),
    ("class_weight", "1e-320", lambda: WeightedSoftmaxCELoss(class_weight=[1.0, 1e-320])),
    ("alpha", "1e-320", lambda: CenterLoss(3, 2, alpha=1e-320)),
    ("weight", "1e-320", lambda: CenterLoss(3, 2, weight=1e-320)),
    # 6. bad types
    ("from_logits", "'no'", lambda: WeightedSoftmaxCELoss(from_logits="no")),
    ("from_logits", "2", lambda: WeightedSoftmaxCELoss(from_logits=2)),
    ("sparse_label", "'no'", lambda: WeightedSoftmaxCELoss(sparse_label="no")),
    ("class_weight", "['1', '2', '3']", lambda: WeightedSoftmaxCELoss(["1", "2", "3"])),
    ("class_weight", "[True, False, True]", lambda: WeightedSoftmaxCELoss([True, False, True])),
    ("ignore_label", "nan", lambda: WeightedSoftmaxCELoss(ignore_label=float("nan"))),
    ("ignore_label", "inf", lambda: WeightedSoftmaxCELoss(ignore_label=float("inf"))),
    ("ignore_label", "nan", lambda: CenterLoss(3, 2, ignore_label=float("nan"))),
    ("ignore_label", "inf", lambda: CenterLoss(3, 2, ignore_label=float("inf"))),
    # 7. non-NDArray and degenerate inputs
    ("pred", "'logits'", lambda: WeightedSoftmaxCELoss()("logits", nd.array([0]))),
    ("label", "{0: 1}", lambda: WeightedSoftmaxCELoss()(nd.zeros((1, 2)), {0: 1})),
    ("sample_weight", "'w'", _loss_call(None, ((0.0, 1.0), (1.0, 0.0)), (0, 1), "w")),
    ("features", "'x'", _center(inputs=("x", nd.array([0])))),
    ("label", "'y'", _center(inputs=(nd.ones((1, 2)), "y"))),
    ("pred", "(0, 3)", _loss_call(pred=nd.array(np.zeros((0, 3))), label=np.zeros((1,)))),
    ("features", "(0, 2)", _center(inputs=(nd.array(np.zeros((0, 2))), nd.array([0])))),
    ("pred", "(3,)", _loss_call(pred=(0.0, 1.0, 2.0), label=(0, 1, 2))),
    ("batch_axis", "3", _loss_call(dict(batch_axis=3))),
    ("batch_axis", "3", _loss_call(dict(batch_axis=3), pred=np.zeros((2, 2, 3)),
                                   label=np.zeros((2, 2)))),
    # 2. non-integer label, imperative
    ("label", "1.5", _loss_call(label=(0, 1.5))),
    ("label", "1.5", _center(inputs=(nd.ones((2, 2)), nd.array([0, 1.5])))),
    # 8. a sample weight shape gluon refuses too (classes along the kept axis)
    ("sample_weight", "(2, 2, 1, 1)",
     _loss_call(dict(axis=1), np.zeros((2, 2, 3, 3)), np.zeros((2, 3, 3)),
                nd.ones((2, 2, 1, 1)))),
    # 9. messages
    ("class_weight", "None", lambda: WeightedSoftmaxCELoss([1, 2]).set_class_weight(None)),
    # 10. inputs on two contexts, hybridized or not
    ("label", "cpu(1)", lambda: WeightedSoftmaxCELoss()(nd.zeros((2, 3)),
                                                        nd.zeros((2,), ctx=mx.cpu(1)))),
    ("sample_weight", "cpu(1)", lambda: _hybridized(WeightedSoftmaxCELoss())(
        nd.zeros((2, 3)), nd.zeros((2,)), nd.ones((2,), ctx=mx.cpu(1)))),
    ("sample_weight", "None", _sample_weight_once_then_not),
]


@pytest.mark.parametrize("name, shown, call", BAD_INPUTS,
                         ids=["%s=%s" % (row[0], row[1]) for row in BAD_INPUTS])
def test_bad_input_raises_value_error_naming_argument_and_value(name, shown, call):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert name in message and shown in message, message


# --- 12. checkpoints: stale temporary files and permissions ------------------------------

def _tiny_block():
    block = gluon.nn.Dense(2, in_units=3)
    block.initialize()
    return block


def test_temporary_file_of_a_killed_writer_is_removed_at_the_next_save_and_load(tmp_path):
    target = str(tmp_path / "net-0001.params")
    # A writer killed with SIGKILL inside atomic_write, after its temporary file exists.
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from examples.common import atomic_write\n"
        "def write(tmp):\n"
        "    open(tmp, 'w').write('half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "atomic_write(sys.argv[1], write)\n"), target], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == b"writing"
    finally:
        writer.kill()
        writer.wait(timeout=30)
    leftover = [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]
    assert len(leftover) == 1 and not os.path.exists(target)
    # One of an older naming (mkstemp's), and one of a live writer, which must stay.
    (tmp_path / ".tmp-checkpoint.jsonk2j4_x").write_text("{}")
    live = tmp_path / (".tmp-net-0002.params.%d.0000abcd" % os.getpid())
    live.write_text("in progress")
    block = _tiny_block()
    save_checkpoint(str(tmp_path), 1, {"net": block}, {})
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)) == [live.name]
    (tmp_path / leftover[0]).write_text("again")
    restored = _tiny_block()
    assert load_checkpoint(str(tmp_path), {"net": restored}, {}, mx.cpu())["epoch"] == 1
    assert not (tmp_path / leftover[0]).exists() and live.exists()
    np.testing.assert_array_equal(restored.weight.data().asnumpy(),
                                  block.weight.data().asnumpy())


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomically_written_files_get_the_permissions_of_any_other_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
        save_checkpoint(str(tmp_path), 1, {"net": _tiny_block()},
                        {"trainer": gluon.Trainer(_tiny_block().collect_params(), "sgd")})
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
             for name in os.listdir(tmp_path)}
    assert set(modes) == {"plain.txt", "net-0001.params", "trainer-0001.states",
                          "checkpoint.json"}
    assert set(modes.values()) == {0o666 & ~umask}, modes
