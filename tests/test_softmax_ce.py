"""WeightedSoftmaxCELoss against float64 references, finite differences and other frameworks."""
import os
import zlib

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon
from hypothesis import given, settings, strategies as st, HealthCheck

from gluon_losses import WeightedSoftmaxCELoss, softmax_ce, weighted_softmax_ce
import reference
from reference import reference_grad, run_loss
from recorded_labels import OutputsAndLabels

NORMALIZATIONS = list(softmax_ce.NORMALIZATIONS)  # the one definition, not a copy
CASES = [  # (pred shape, axis): the three layouts the issue names
    ((6, 4), -1),
    ((2, 5, 3), -1),
    ((2, 3, 4, 5), 1),
]


def random_case(shape, axis, seed, ignore_fraction=0.3, ignore_label=-1):
    rng = np.random.RandomState(seed)
    num_classes = shape[axis]
    label_shape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    label = rng.randint(0, num_classes, size=label_shape).astype(np.float32)
    label[rng.rand(*label_shape) < ignore_fraction] = ignore_label
    pred = (rng.randn(*shape) * 2).astype(np.float32)
    class_weight = rng.uniform(0.2, 3.0, size=num_classes)
    return pred, label, class_weight


def assert_close_to_float32(actual, expected, rtol, atol):
    """float32 results against float64 ones, ``atol`` relative to the largest value.

    float32 log_softmax errs by about 1e-6 of the largest log-probability, and 'null'
    scales every value by the batch size, so the absolute tolerance follows the values.
    """
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


# --- the seed case and published anchors -------------------------------------------

def test_seed_case_value_and_gradient():
    loss_fn = WeightedSoftmaxCELoss(class_weight=[1, 2])
    value, grad = run_loss(loss_fn, np.array([[1, 0]], np.float32), np.array([1], np.float32))
    # 2 * log(1 + e) and 2 * (softmax - onehot) for logits [1, 0], label 1, weight 2;
    # float32 log_softmax is within a few ulps of the float64 value.
    np.testing.assert_allclose(value, [2.6265233], rtol=2e-6)
    np.testing.assert_allclose(grad, [[1.4621172, -1.4621172]], rtol=2e-6)


def test_batch_normalization_equals_gluon_softmax_ce_elementwise():
    pred, label, _ = random_case((3, 7, 5), -1, seed=1, ignore_fraction=0.0)
    ours, our_grad = run_loss(WeightedSoftmaxCELoss(normalization="batch"), pred, label)
    gluons, gluon_grad = run_loss(gluon.loss.SoftmaxCrossEntropyLoss(), pred, label)
    # gluon's float32 log_softmax is itself a few ulps (up to ~1e-6) from float64.
    np.testing.assert_allclose(ours, gluons, rtol=5e-6)
    # Peers' float32 gradients err by up to ~5e-7 against float64 (ours by ~1e-8).
    np.testing.assert_allclose(our_grad, gluon_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis", [((8, 5), -1), ((2, 5, 3, 4), 1)])
def test_valid_gradient_equals_softmax_output(shape, axis):
    """SoftmaxOutput(normalization='valid') writes (p - onehot) / #valid as its gradient."""
    pred, label, _ = random_case(shape, axis, seed=2)
    ours = WeightedSoftmaxCELoss(axis=axis)
    _, grad = run_loss(ours, pred, label)
    pred_nd = mx.nd.array(pred)
    pred_nd.attach_grad()
    with autograd.record():
        out = mx.nd.SoftmaxOutput(pred_nd, mx.nd.array(label), ignore_label=-1, use_ignore=True,
                                  normalization="valid", multi_output=axis == 1)
    out.backward()
    batch = label.shape[0]
    np.testing.assert_allclose(grad / batch, pred_nd.grad.asnumpy(), rtol=1e-5, atol=1e-6)


def test_drop_in_for_gluoncv_rcnn_masking():
    """Equals GluonCV's rcnn_cls_loss(p, t, t >= 0) * t.size / #(t >= 0), elementwise."""
    pred, label, _ = random_case((2, 16, 4), -1, seed=3, ignore_fraction=0.6)
    ours, _ = run_loss(WeightedSoftmaxCELoss(), pred, label)
    mask = mx.nd.array(label).expand_dims(-1) >= 0
    gluons = gluon.loss.SoftmaxCrossEntropyLoss()(mx.nd.array(pred), mx.nd.array(label), mask)
    gluons = gluons * label.size / (label >= 0).sum()
    np.testing.assert_allclose(ours, gluons.asnumpy(), rtol=1e-5)


def test_weight_normalization_is_pytorch_weighted_mean():
    """PyTorch's mean with weight: sum_i w_{y_i} l_i / sum_i w_{y_i} over non-ignored i."""
    pred, label, class_weight = random_case((10, 4), -1, seed=4)
    ours, _ = run_loss(WeightedSoftmaxCELoss(class_weight, normalization="weight"), pred, label)
    keep = label != -1
    log_prob = reference.log_softmax(pred.astype(np.float64))
    index = label[keep].astype(int)
    nll = -log_prob[keep][np.arange(index.size), index]
    expected = (class_weight[index] * nll).sum() / class_weight[index].sum()
    np.testing.assert_allclose(ours.mean(), expected, rtol=1e-5)


# --- every mode, axis and weighting against the float64 reference --------------------

@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference_value_and_gradient(shape, axis, normalization, weighted):
    seed = zlib.crc32(repr((shape, normalization, weighted)).encode())
    pred, label, class_weight = random_case(shape, axis, seed=seed)
    class_weight = class_weight if weighted else None
    loss_fn = WeightedSoftmaxCELoss(class_weight, axis=axis, normalization=normalization)
    value, grad = run_loss(loss_fn, pred, label)
    kwargs = dict(class_weight=class_weight, axis=axis, normalization=normalization)
    expected = reference.softmax_ce(pred, label, **kwargs)
    assert_close_to_float32(value, expected, rtol=2e-5, atol=1e-5)
    assert_close_to_float32(grad, reference_grad(pred, label, **kwargs), rtol=1e-3, atol=1e-5)
    expected_shape = label.shape if normalization == "none" else (label.shape[0],)
    assert value.shape == expected_shape


@pytest.mark.parametrize("normalization", ["valid", "batch", "weight", "null"])
def test_output_mean_is_normalized_loss_and_gradient_is_analytic(normalization):
    """Mean over the batch is L; the gradient of sum(out) is B * w s (p - onehot) / Z."""
    pred, label, class_weight = random_case((2, 6, 4), -1, seed=5)
    sample_weight = np.random.RandomState(5).uniform(0.5, 1.5, size=(2, 6, 1))
    loss_fn = WeightedSoftmaxCELoss(class_weight, normalization=normalization)
    value, grad = run_loss(loss_fn, pred, label, sample_weight)
    keep = label != -1
    index = np.where(keep, label, 0).astype(int)
    per_position = class_weight[index] * sample_weight[..., 0] * keep
    z = {"valid": keep.sum(), "batch": label.size, "weight": per_position.sum(),
         "null": 1.0}[normalization]
    prob = np.exp(reference.log_softmax(pred.astype(np.float64)))
    onehot = np.eye(4)[index]
    expected_grad = label.shape[0] * per_position[..., None] * (prob - onehot) / z
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
    log_prob = np.log(prob)
    nll = -np.take_along_axis(log_prob, index[..., None], -1)[..., 0]
    np.testing.assert_allclose(value.mean(), (per_position * nll).sum() / z, rtol=1e-5)


@pytest.mark.parametrize("sample_shape", [(2, 6, 1), (2, 6), (2,), (2, 1)])
def test_sample_weight_shapes(sample_shape):
    pred, label, class_weight = random_case((2, 6, 4), -1, seed=6)
    rng = np.random.RandomState(6)
    sample_weight = rng.uniform(0.1, 2.0, size=sample_shape)
    value, grad = run_loss(WeightedSoftmaxCELoss(class_weight), pred, label, sample_weight)
    as_positions = sample_weight.reshape(sample_shape[:2] if len(sample_shape) == 3 else
                                         (2, -1) if len(sample_shape) == 1 else sample_shape)
    kwargs = dict(class_weight=class_weight, sample_weight=as_positions)
    np.testing.assert_allclose(value, reference.softmax_ce(pred, label, **kwargs), rtol=2e-5)
    np.testing.assert_allclose(grad, reference_grad(pred, label, **kwargs), rtol=1e-3, atol=1e-5)


def test_sample_weight_that_does_not_broadcast_names_both_shapes():
    pred, label, _ = random_case((2, 6, 4), -1, seed=7)
    with pytest.raises(ValueError, match=r"sample_weight has shape \(6, 2\).*\(2, 6\)"):
        run_loss(WeightedSoftmaxCELoss(), pred, label, np.ones((6, 2)))


@pytest.mark.parametrize("ignore_label", [-1, 255])
def test_ignored_positions_get_zero_loss_and_zero_gradient(ignore_label):
    pred, label, class_weight = random_case((4, 5, 3), -1, seed=8, ignore_label=ignore_label)
    loss_fn = WeightedSoftmaxCELoss(class_weight, ignore_label=ignore_label, normalization="none")
    value, grad = run_loss(loss_fn, pred, label)
    ignored = label == ignore_label
    assert ignored.any() and (~ignored).any()
    assert np.all(value[ignored] == 0) and np.all(value[~ignored] > 0)
    assert np.all(grad[ignored] == 0) and np.all(np.abs(grad[~ignored]).sum(-1) > 0)


def test_ignore_label_inside_class_range_is_still_ignored():
    pred, label, _ = random_case((12, 4), -1, seed=9, ignore_fraction=0.0)
    loss_fn = WeightedSoftmaxCELoss(ignore_label=0, normalization="none")
    value, grad = run_loss(loss_fn, pred, label)
    assert np.all(value[label == 0] == 0) and np.all(grad[label == 0] == 0)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("hybridize", [False, True])
def test_all_ignored_batch_gives_zero_loss_and_gradient(normalization, hybridize):
    loss_fn = WeightedSoftmaxCELoss([1.0, 2.0, 3.0], normalization=normalization)
    if hybridize:
        loss_fn.hybridize()
    pred = np.random.RandomState(10).randn(2, 4, 3).astype(np.float32)
    value, grad = run_loss(loss_fn, pred, -np.ones((2, 4), np.float32))
    assert np.all(value == 0) and np.all(grad == 0)


def test_ignore_label_none_counts_every_position():
    pred, label, _ = random_case((5, 3), -1, seed=11, ignore_fraction=0.0)
    value, _ = run_loss(WeightedSoftmaxCELoss(ignore_label=None), pred, label)
    np.testing.assert_allclose(value, reference.softmax_ce(pred, label, ignore_label=None),
                               rtol=1e-5)


# The ignore label's place in the graph's weight lookup: none, a slot of its own just
# below class 0 or further below, a mask (far below 0, inside the class range, above it).
IGNORE_LABELS = [None, -1, -3, -100, -5000, 0, 2, 255]


@pytest.mark.parametrize("ignore_label", IGNORE_LABELS)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("fused", [None, False])
def test_every_ignore_label_matches_reference(ignore_label, normalization, fused):
    pred, label, class_weight = random_case(
        (3, 4, 5), -1, seed=23, ignore_fraction=0.0 if ignore_label is None else 0.3,
        ignore_label=ignore_label)
    loss_fn = WeightedSoftmaxCELoss(class_weight, ignore_label=ignore_label,
                                    normalization=normalization, fused=fused)
    loss_fn.hybridize()
    value, grad = run_loss(loss_fn, pred, label)
    kwargs = dict(class_weight=class_weight, ignore_label=ignore_label,
                  normalization=normalization)
    assert_close_to_float32(value, reference.softmax_ce(pred, label, **kwargs), rtol=2e-5,
                            atol=2e-6)
    assert_close_to_float32(grad, reference_grad(pred, label, **kwargs), rtol=2e-3,
                            atol=2e-4)


@pytest.mark.parametrize("ignore_label", [-1, -3, 255])
@pytest.mark.parametrize("fused", [None, False])
def test_labels_next_to_the_ignore_label_are_bad_in_a_graph(ignore_label, fused):
    """Integers between or beside the ignore label and the classes are not classes."""
    loss_fn = WeightedSoftmaxCELoss([1.0, 2.0, 3.0], ignore_label=ignore_label,
                                    normalization="none", fused=fused)
    loss_fn.hybridize()
    pred = np.random.RandomState(24).randn(2, 3).astype(np.float32)
    for bad in (ignore_label - 1, ignore_label + 0.5, ignore_label + 1 if ignore_label < -1
                else 3, -2.0**30, 2.0**30):
        value, grad = run_loss(loss_fn, pred, np.array([bad, ignore_label], np.float32))
        assert np.isnan(value[0]) and np.all(np.isnan(grad[0])), (bad, value)
        assert value[1] == 0 and np.all(grad[1] == 0), (bad, value, grad)


@pytest.mark.parametrize("shape, axis", CASES)
def test_bench_yardstick_computes_the_same_loss(shape, axis):
    """bench/'s frozen pre-fused graph is timed against the fallback: same loss, same
    gradient, on the labels both handle (integers, ignore label -1)."""
    from bench.pre_fused_graph import PreFusedGraph
    pred, label, class_weight = random_case(shape, axis, seed=25)
    results = []
    for loss_fn in (PreFusedGraph(class_weight=class_weight, axis=axis),
                    WeightedSoftmaxCELoss(class_weight, axis=axis, fused=False)):
        loss_fn.hybridize()
        results.append(run_loss(loss_fn, pred, label))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    # NCHW: the fallback transposes before its log_softmax, rounding differently.
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


# --- dense targets, smoothing, focal, log-probability inputs --------------------------

@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("normalization", ["valid", "weight", "none"])
def test_dense_labels_weight_each_class(shape, axis, normalization):
    rng = np.random.RandomState(12)
    pred = rng.randn(*shape).astype(np.float32)
    target = np.moveaxis(np.exp(reference.log_softmax(rng.randn(*shape))), axis, axis)
    class_weight = rng.uniform(0.5, 2.0, size=shape[axis])
    position_shape = tuple(n for i, n in enumerate(shape) if i != axis % len(shape))
    sample_weight = rng.uniform(0.5, 2.0, size=position_shape)
    loss_fn = WeightedSoftmaxCELoss(class_weight, axis=axis, sparse_label=False,
                                    normalization=normalization)
    value, grad = run_loss(loss_fn, pred, target.astype(np.float32), sample_weight)
    kwargs = dict(class_weight=class_weight, sample_weight=sample_weight, axis=axis,
                  sparse_label=False, normalization=normalization)
    np.testing.assert_allclose(value, reference.softmax_ce(pred, target, **kwargs), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(grad, reference_grad(pred, target, **kwargs), rtol=1e-3,
                               atol=1e-5)


def test_dense_onehot_equals_sparse():
    pred, label, class_weight = random_case((7, 4), -1, seed=13, ignore_fraction=0.0)
    sparse, sparse_grad = run_loss(WeightedSoftmaxCELoss(class_weight), pred, label)
    onehot = np.eye(4, dtype=np.float32)[label.astype(int)]
    dense, dense_grad = run_loss(WeightedSoftmaxCELoss(class_weight, sparse_label=False), pred,
                                 onehot)
    # Sparse labels may run on the fused operator, dense ones never: two float32 paths.
    np.testing.assert_allclose(sparse, dense, rtol=1e-5)
    np.testing.assert_allclose(sparse_grad, dense_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("label_smoothing, gamma", [(0.1, 0.0), (0.0, 2.0), (0.2, 0.5)])
def test_smoothing_and_focal(shape, axis, label_smoothing, gamma):
    pred, label, class_weight = random_case(shape, axis, seed=14)
    loss_fn = WeightedSoftmaxCELoss(class_weight, axis=axis, label_smoothing=label_smoothing,
                                    gamma=gamma)
    value, grad = run_loss(loss_fn, pred, label)
    kwargs = dict(class_weight=class_weight, axis=axis, label_smoothing=label_smoothing,
                  gamma=gamma)
    np.testing.assert_allclose(value, reference.softmax_ce(pred, label, **kwargs), rtol=2e-5,
                               atol=1e-6)
    np.testing.assert_allclose(grad, reference_grad(pred, label, **kwargs), rtol=1e-3, atol=1e-5)


def test_focal_loss_published_value():
    """Lin et al.: FL(p_t) = -(1 - p_t)^gamma log p_t; p_t = 0.9, gamma = 2 gives 1.0536e-3."""
    logits = np.log(np.array([[0.9, 0.1]], np.float32))
    value, _ = run_loss(WeightedSoftmaxCELoss(gamma=2.0), logits, np.array([0], np.float32))
    np.testing.assert_allclose(value, [0.01 * -np.log(0.9)], rtol=5e-5)


def test_label_smoothing_convention_differs_from_pytorch_only_with_weights():
    """Whole position weighted by w[y] here; PyTorch weights each class term by w_c."""
    pred, label, _ = random_case((6, 3), -1, seed=15, ignore_fraction=0.0)
    eps = 0.3
    log_prob = reference.log_softmax(pred.astype(np.float64))
    index = label.astype(int)
    target = (1 - eps) * np.eye(3)[index] + eps / 3
    unweighted, _ = run_loss(WeightedSoftmaxCELoss(label_smoothing=eps), pred, label)
    np.testing.assert_allclose(unweighted.mean(), -(target * log_prob).sum(-1).mean(), rtol=1e-5)
    class_weight = np.array([1.0, 2.0, 5.0])
    weighted, _ = run_loss(WeightedSoftmaxCELoss(class_weight, label_smoothing=eps,
                                                 normalization="null"), pred, label)
    ours = -(class_weight[index][:, None] * target * log_prob).sum()
    pytorch_style = -(class_weight[None, :] * target * log_prob).sum()
    np.testing.assert_allclose(weighted.mean(), ours, rtol=1e-5)
    assert abs(ours - pytorch_style) > 1e-2


def test_from_logits_takes_log_probabilities():
    pred, label, class_weight = random_case((2, 4, 5), -1, seed=16)
    log_prob = reference.log_softmax(pred.astype(np.float64)).astype(np.float32)
    a, _ = run_loss(WeightedSoftmaxCELoss(class_weight), pred, label)
    b, _ = run_loss(WeightedSoftmaxCELoss(class_weight, from_logits=True), log_prob, label)
    np.testing.assert_allclose(a, b, rtol=1e-5)


# --- numerical stability ----------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_huge_logits_stay_finite(gamma, label_smoothing):
    pred = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3], [0.0, 0.0, 1e4]], np.float32)
    label = np.array([0, 2, 1], np.float32)
    loss_fn = WeightedSoftmaxCELoss([1.0, 2.0, 0.5], gamma=gamma, label_smoothing=label_smoothing)
    value, grad = run_loss(loss_fn, pred, label)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    kwargs = dict(class_weight=[1.0, 2.0, 0.5], gamma=gamma, label_smoothing=label_smoothing)
    # A margin of 1e4 leaves -log p_t at float32 rounding level (about 1e-6), not 0.
    np.testing.assert_allclose(value, reference.softmax_ce(pred, label, **kwargs), rtol=1e-5,
                               atol=1e-5)


def test_float16_input_computed_in_float32():
    pred, label, class_weight = random_case((64, 10), -1, seed=17)
    pred16 = pred.astype(np.float16)
    loss_fn = WeightedSoftmaxCELoss(class_weight)
    value16, grad16 = run_loss(loss_fn, pred16, label)
    value32, grad32 = run_loss(loss_fn, pred16.astype(np.float32), label)
    np.testing.assert_allclose(value16, value32, rtol=1e-3)
    np.testing.assert_allclose(grad16, grad32, rtol=1e-3, atol=1e-3)
    big = np.full((2, 3), 6e4, np.float16)
    big[:, 0] = -6e4
    value, grad = run_loss(WeightedSoftmaxCELoss([1, 1, 1]), big, np.array([0, 1], np.float32))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))


# --- class weights as a parameter -------------------------------------------------------

def test_class_weight_saved_loaded_and_replaced_without_rehybridizing(tmp_path):
    pred, label, class_weight = random_case((6, 3), -1, seed=18)
    loss_fn = WeightedSoftmaxCELoss(class_weight)
    loss_fn.hybridize()
    before, _ = run_loss(loss_fn, pred, label)
    path = str(tmp_path / "loss.params")
    loss_fn.save_parameters(path)
    new_weight = np.array([5.0, 0.1, 1.0])
    loss_fn.set_class_weight(new_weight)
    after, _ = run_loss(loss_fn, pred, label)
    np.testing.assert_allclose(after, reference.softmax_ce(pred, label, class_weight=new_weight),
                               rtol=1e-5)
    restored = WeightedSoftmaxCELoss([1.0, 1.0, 1.0])
    restored.load_parameters(path)
    np.testing.assert_allclose(restored.class_weight.data().asnumpy(), class_weight, rtol=1e-6)
    np.testing.assert_allclose(run_loss(restored, pred, label)[0], before, rtol=1e-6)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_hybridized_and_exported_match_imperative(tmp_path, normalization):
    pred, label, class_weight = random_case((2, 3, 4, 5), 1, seed=19)
    sample_weight = np.random.RandomState(19).uniform(0.5, 2, size=(2, 4, 5)).astype(np.float32)
    imperative = WeightedSoftmaxCELoss(class_weight, axis=1, normalization=normalization)
    expected, expected_grad = run_loss(imperative, pred, label, sample_weight)
    hybrid = WeightedSoftmaxCELoss(class_weight, axis=1, normalization=normalization)
    hybrid.hybridize()
    value, grad = run_loss(hybrid, pred, label, sample_weight)
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-8)
    prefix = str(tmp_path / "wce")
    hybrid.export(prefix)
    exported = gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data0", "data1", "data2"],
                                         prefix + "-0000.params")
    value = exported(mx.nd.array(pred), mx.nd.array(label), mx.nd.array(sample_weight))
    # The default export is built from MXNet's operators, so it matches the graph path
    # bitwise-close, and the fused path to float32 rounding.
    graph = WeightedSoftmaxCELoss(class_weight, axis=1, normalization=normalization, fused=False)
    graph_value, _ = run_loss(graph, pred, label, sample_weight)
    np.testing.assert_allclose(value.asnumpy(), graph_value, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(value.asnumpy(), expected, rtol=1e-4, atol=1e-6)


def test_exported_graph_holds_the_class_weights(tmp_path):
    loss_fn = WeightedSoftmaxCELoss([0.5, 4.0])
    loss_fn.hybridize()
    loss_fn(mx.nd.array([[0.0, 1.0]]), mx.nd.array([1]))
    prefix = str(tmp_path / "wce")
    loss_fn.export(prefix)
    params = mx.nd.load(prefix + "-0000.params")
    (name, weights), = params.items()
    assert name.endswith("class_weight")
    np.testing.assert_allclose(weights.asnumpy(), [0.5, 4.0])


# --- bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("class_weight, message", [
    ([1.0, -1.0], r"class_weight must be finite and >= 0, got -1.0 at index 1"),
    ([1.0, float("nan")], r"class_weight must be finite and >= 0, got nan"),
    ([0.0, 0.0], r"class_weight must have at least one positive entry"),
    ([[1.0, 2.0]], r"class_weight must be a non-empty 1-D vector"),
])
def test_bad_class_weight_rejected_at_construction(class_weight, message):
    with pytest.raises(ValueError, match=message):
        WeightedSoftmaxCELoss(class_weight)


@pytest.mark.parametrize("kwargs, message", [
    (dict(normalization="mean"), r"normalization must be one of .* got 'mean'"),
    (dict(label_smoothing=1.0), r"label_smoothing must lie in \[0.0, 1.0\), got 1.0"),
    (dict(gamma=-1.0), r"gamma must lie in \[0.0, inf\], got -1.0"),
    (dict(ignore_label=0.5), r"ignore_label must be an integer or None, got 0.5"),
    (dict(axis="1"), r"axis must be an integer, got '1'"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightedSoftmaxCELoss(**kwargs)


def test_replacing_weights_with_wrong_length_is_refused():
    with pytest.raises(ValueError, match="class_weight must have length 3, got length 2"):
        WeightedSoftmaxCELoss([1, 1, 1]).set_class_weight([1, 2])


@pytest.mark.parametrize("bad", [3, -2, 7.0])
def test_label_outside_classes_raises_naming_value(bad):
    label = np.array([0, bad, 1], np.float32)
    message = r"label contains %r, which is outside \[0, 3\)" % float(bad)
    with pytest.raises(ValueError, match=message):
        run_loss(WeightedSoftmaxCELoss(), np.zeros((3, 3), np.float32), label)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_label_outside_classes_is_nan_inside_hybridized_graph(normalization, weighted):
    loss_fn = WeightedSoftmaxCELoss([1, 2, 3] if weighted else None, normalization=normalization)
    loss_fn.hybridize()
    for bad in (3, -2, 255):
        value, _ = run_loss(loss_fn, np.zeros((3, 3), np.float32),
                            np.array([0, bad, -1], np.float32))
        assert np.isnan(value.mean()), (bad, value)
    value, _ = run_loss(loss_fn, np.zeros((3, 3), np.float32), np.array([0, 2, -1], np.float32))
    assert np.all(np.isfinite(value))


@pytest.mark.parametrize("pred_shape, label_shape, message", [
    ((4, 3), (5,), r"label has shape \(5,\) but pred of shape \(4, 3\) needs it to be \(4,\)"),
    ((2, 4, 3), (2, 3), r"label has shape \(2, 3\) but pred of shape \(2, 4, 3\) needs it"),
])
def test_shape_mismatch_names_both_shapes(pred_shape, label_shape, message):
    with pytest.raises(ValueError, match=message):
        WeightedSoftmaxCELoss()(mx.nd.zeros(pred_shape), mx.nd.zeros(label_shape))


def test_class_count_mismatch_names_both():
    with pytest.raises(ValueError, match=r"pred has 4 classes .* class_weight has length 3"):
        WeightedSoftmaxCELoss([1, 1, 1])(mx.nd.zeros((2, 4)), mx.nd.zeros((2,)))


def test_label_with_class_axis_kept_is_accepted():
    pred, label, _ = random_case((2, 6, 4), -1, seed=20)
    a, _ = run_loss(WeightedSoftmaxCELoss(), pred, label)
    b, _ = run_loss(WeightedSoftmaxCELoss(), pred, label[..., None])
    np.testing.assert_allclose(a, b)


# --- contexts ---------------------------------------------------------------------------

@pytest.mark.parametrize("hybridize", [False, True])
def test_split_and_load_over_two_cpu_contexts(hybridize):
    contexts = [mx.cpu(0), mx.cpu(1)]
    pred, label, class_weight = random_case((8, 5), -1, seed=21)
    loss_fn = WeightedSoftmaxCELoss(class_weight)
    if hybridize:
        loss_fn.hybridize()
    preds = gluon.utils.split_and_load(mx.nd.array(pred), contexts)
    labels = gluon.utils.split_and_load(mx.nd.array(label), contexts)
    for p in preds:
        p.attach_grad()
    with autograd.record():
        losses = [loss_fn(p, y) for p, y in zip(preds, labels)]
    autograd.backward(losses)
    for part, (p, loss) in enumerate(zip(preds, losses)):
        assert loss.context == contexts[part] and p.grad.context == contexts[part]
        rows = slice(4 * part, 4 * part + 4)
        np.testing.assert_allclose(loss.asnumpy(), reference.softmax_ce(
            pred[rows], label[rows], class_weight=class_weight), rtol=2e-5)
    assert set(loss_fn.class_weight.list_ctx()) == set(contexts)


@pytest.mark.skipif(mx.context.num_gpus() == 0, reason="no GPU on this machine")
def test_gpu_matches_cpu():
    pred, label, class_weight = random_case((2, 3, 8, 8), 1, seed=22)
    loss_fn = WeightedSoftmaxCELoss(class_weight, axis=1)
    cpu_value, cpu_grad = run_loss(loss_fn, pred, label)
    gpu_value, gpu_grad = run_loss(loss_fn, pred, label, ctx=mx.gpu(0))
    np.testing.assert_allclose(gpu_value, cpu_value, rtol=1e-5)
    np.testing.assert_allclose(gpu_grad, cpu_grad, rtol=1e-4, atol=1e-7)


# --- the functional core ----------------------------------------------------------------

def test_functional_core_matches_block():
    pred, label, class_weight = random_case((2, 5, 3), -1, seed=23)
    out = weighted_softmax_ce(mx.nd, mx.nd.array(pred), mx.nd.array(label),
                              class_weight=mx.nd.array(class_weight))
    np.testing.assert_allclose(out.asnumpy(), reference.softmax_ce(
        pred, label, class_weight=class_weight), rtol=2e-5)


def test_symbolic_use_without_ndarrays():
    loss_fn = WeightedSoftmaxCELoss([1.0, 2.0])
    out = loss_fn(mx.sym.var("pred"), mx.sym.var("label"))
    weight_name, = [n for n in out.list_arguments() if n.endswith("class_weight")]
    executor = out.bind(mx.cpu(), {"pred": mx.nd.array([[1, 0]]), "label": mx.nd.array([1]),
                                   weight_name: mx.nd.array([1.0, 2.0])})
    np.testing.assert_allclose(executor.forward()[0].asnumpy(), [2.6265233], rtol=2e-6)


# --- properties over random inputs -----------------------------------------------------

@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 40)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_matches_reference(data):
    ndim = data.draw(st.integers(2, 4), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim),
                            label="shape"))
    axis = data.draw(st.sampled_from([-1, 1] if ndim > 2 else [-1, 1, 0]), label="axis")
    shape = list(shape)
    shape[axis] = data.draw(st.integers(2, 6), label="num_classes")
    shape = tuple(shape)
    normalization = data.draw(st.sampled_from(NORMALIZATIONS), label="normalization")
    ignore_fraction = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="ignore_fraction")
    weighted = data.draw(st.booleans(), label="weighted")
    batch_axis = data.draw(st.integers(0, ndim - 2), label="batch_axis")
    pred, label, class_weight = random_case(shape, axis, seed=data.draw(st.integers(0, 10**6)),
                                            ignore_fraction=ignore_fraction)
    class_weight = class_weight if weighted else None
    hybridize = data.draw(st.booleans(), label="hybridize")
    loss_fn = WeightedSoftmaxCELoss(class_weight, axis=axis, normalization=normalization,
                                    batch_axis=batch_axis)
    if hybridize:
        loss_fn.hybridize()
    value, grad = run_loss(loss_fn, pred, label)
    kwargs = dict(class_weight=class_weight, axis=axis, normalization=normalization,
                  batch_axis=batch_axis)
    assert_close_to_float32(value, reference.softmax_ce(pred, label, **kwargs), rtol=5e-5,
                            atol=1e-5)
    assert_close_to_float32(grad, reference_grad(pred, label, **kwargs), rtol=2e-3, atol=2e-4)
    assert np.all(grad[np.moveaxis(np.broadcast_to(
        (label == -1)[..., None], label.shape + (shape[axis],)), -1, axis)] == 0)


# --- values pinned from PyTorch 2.13 (torch.nn.functional.cross_entropy, float64) -------

TORCH_PRED = np.array([[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 1.5], [-2.0, 0.5, 0.5, 0.0],
                       [3.0, 1.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
TORCH_LABEL = np.array([2, 3, -1, 0, 1], np.float32)


def test_weight_normalization_pinned_to_pytorch():
    """cross_entropy(weight=[.5, 2, 1, 3], ignore_index=-1, reduction='mean')."""
    loss_fn = WeightedSoftmaxCELoss([0.5, 2.0, 1.0, 3.0], normalization="weight")
    value, grad = run_loss(loss_fn, TORCH_PRED, TORCH_LABEL)
    np.testing.assert_allclose(value.mean(), 0.733487535334606, rtol=1e-5)
    torch_grad = [[0.03466567095695431, 0.007734956712277987, -0.05961509041252449,
                   0.01721446274329219],
                  [0.07855534842700701, 0.07107981864360821, 0.02366041626096082,
                   -0.17329558333157608],
                  [0.0, 0.0, 0.0, 0.0],
                  [-0.01300364149661913, 0.008650554897764043, 0.0011707252972427639,
                   0.0031823613016123196],
                  [0.07692307692307693, -0.23076923076923078, 0.07692307692307693,
                   0.07692307692307693]]
    np.testing.assert_allclose(grad / 5, torch_grad, rtol=1e-5, atol=1e-7)


def test_unweighted_label_smoothing_pinned_to_pytorch():
    """cross_entropy(ignore_index=-1, label_smoothing=0.1): the conventions agree unweighted."""
    value, grad = run_loss(WeightedSoftmaxCELoss(label_smoothing=0.1), TORCH_PRED, TORCH_LABEL)
    np.testing.assert_allclose(value.mean(), 0.7543604917612514, rtol=1e-5)
    np.testing.assert_allclose(grad[4] / 5, [0.05625, -0.16875, 0.05625, 0.05625], rtol=1e-5)
    np.testing.assert_allclose(grad[0] / 5, [0.05008171530505075, 0.006319304657451728,
                                             -0.0781245219203523, 0.021723501957849813],
                               rtol=1e-5)


def test_segmentation_weight_mean_pinned_to_pytorch():
    """(1, 3, 2, 2) scores, ignore_index=255, weight=[1, 4, .25], reduction='mean'."""
    pred = ((np.arange(12).reshape(1, 3, 2, 2) * 0.37) % 1.3 - 0.5).astype(np.float32)
    label = np.array([[[0, 255], [2, 1]]], np.float32)
    loss_fn = WeightedSoftmaxCELoss([1.0, 4.0, 0.25], axis=1, ignore_label=255,
                                    normalization="weight")
    value, grad = run_loss(loss_fn, pred, label)
    np.testing.assert_allclose(value.mean(), 0.8771488227482394, rtol=1e-5)
    torch_grad = [[[[-0.13801131338189335, 0.0], [0.01311621927357428, 0.2944166684901314]],
                   [[0.06281186181134427, 0.0], [0.01570296545283606, -0.4094240143958987]],
                   [[0.0751994515705491, 0.0], [-0.02881918472641034, 0.11500734590576735]]]]
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hybridize", [False, True])
def test_labels_from_a_recorded_graph_need_no_detach(hybridize):
    """GluonCV's cls_targets come out of the recorded network; take/pick must not fail."""
    net = OutputsAndLabels()
    net.hybridize()
    loss_fn = WeightedSoftmaxCELoss([1.0, 2.0, 3.0])
    if hybridize:
        loss_fn.hybridize()
    x = mx.nd.array(np.random.RandomState(24).uniform(-3, 3, (4, 3)))
    x.attach_grad()
    with autograd.record():
        pred, label = net(x)
        loss = loss_fn(pred, label)
    loss.backward()
    _, expected = run_loss(WeightedSoftmaxCELoss([1.0, 2.0, 3.0]), 2 * x.asnumpy(),
                           np.arange(4) % 3)
    np.testing.assert_allclose(x.grad.asnumpy(), 2 * expected, rtol=1e-5)


def test_hybridized_loss_refuses_a_rank_its_graph_was_not_built_for():
    """1-D labels skip the per-sample mean in the graph, so (N, C) -> (B, N, C) must rebuild."""
    loss_fn = WeightedSoftmaxCELoss()
    loss_fn.hybridize()
    loss_fn(mx.nd.zeros((4, 3)), mx.nd.zeros((4,)))
    with pytest.raises(ValueError, match="pred has 3 dimensions but this hybridized loss was "
                                         "built for 2; call hybridize\\(\\) again"):
        loss_fn(mx.nd.zeros((2, 4, 3)), mx.nd.zeros((2, 4)))
    loss_fn.hybridize()
    value, _ = run_loss(loss_fn, np.zeros((2, 4, 3), np.float32), np.zeros((2, 4), np.float32))
    np.testing.assert_allclose(value, [np.log(3)] * 2, rtol=5e-6)
    # Ranks above 2 share one graph.
    value, _ = run_loss(loss_fn, np.zeros((2, 2, 2, 5), np.float32),
                        np.zeros((2, 2, 2), np.float32))
    np.testing.assert_allclose(value, [np.log(5)] * 2, rtol=5e-6)


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 40)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_edge_inputs_never_nan_and_zero_weight_is_exactly_zero(data):
    """float16/32/64 logits up to float32's largest number, C = 1, zero weights of every
    kind under every normalization: a value never NaN, a finite gradient wherever the
    loss (times gamma, if above 1) is finite, exactly 0 (value and gradient) where a position carries no weight,
    the float64 reference wherever the logits spread less than float32's largest number."""
    dtype = data.draw(st.sampled_from(["float16", "float32", "float64"]), label="dtype")
    scale = data.draw(st.sampled_from([1.0, 1e4, 1e30, float(np.finfo(np.float32).max)]),
                      label="scale")
    if dtype == "float16":
        scale = min(scale, 3e4)
    ndim = data.draw(st.integers(2, 3), label="ndim")
    axis = data.draw(st.sampled_from([-1, 1]), label="axis")
    shape = list(data.draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    shape[axis] = data.draw(st.integers(1, 4), label="num_classes")
    shape = tuple(shape)
    num_classes = shape[axis]
    normalization = data.draw(st.sampled_from(NORMALIZATIONS), label="normalization")
    sparse_label = data.draw(st.booleans(), label="sparse_label")
    label_smoothing = data.draw(st.sampled_from([0.0, 0.3]), label="label_smoothing")
    gamma = data.draw(st.sampled_from([0.0, 0.5, 2.0]), label="gamma")
    hybridize = data.draw(st.booleans(), label="hybridize")
    rng = np.random.RandomState(data.draw(st.integers(0, 10 ** 6), label="seed"))
    pred = (rng.uniform(-1, 1, shape) * scale).astype(dtype)
    position_shape = tuple(s for i, s in enumerate(shape) if i != axis % ndim)
    class_weight = rng.choice([0.0, 0.5, 2.0], size=num_classes)
    class_weight[rng.randint(num_classes)] = 1.0
    sample_weight = rng.choice([0.0, 1.0, 3.0], size=position_shape).astype(np.float32)
    if sparse_label:
        label = rng.randint(-1, num_classes, size=position_shape).astype(np.float32)
        carries_weight = (label >= 0) & (class_weight[np.maximum(label, 0).astype(int)] > 0)
    else:
        label = rng.choice([0.0, 0.5, 1.0], size=shape).astype(np.float32)
        carries_weight = np.ones(position_shape, bool)
    carries_weight &= sample_weight != 0
    kwargs = dict(class_weight=class_weight, axis=axis, sparse_label=sparse_label,
                  normalization=normalization, label_smoothing=label_smoothing, gamma=gamma)
    loss_fn = WeightedSoftmaxCELoss(**kwargs)
    if hybridize:
        loss_fn.hybridize()
    value, grad = run_loss(loss_fn, pred, label, sample_weight)
    assert not np.isnan(value).any(), value
    # The focal loss's derivative by log(1 - p) is gamma times the loss.
    if np.all(np.abs(value) * max(1.0, gamma) < np.finfo(np.float32).max):
        assert np.isfinite(grad).all(), grad
    grad_at = np.moveaxis(grad, axis, -1)
    assert np.all(grad_at[~carries_weight] == 0)
    if normalization == "none":
        assert np.all(value[~carries_weight] == 0)
    if not carries_weight.any():
        assert np.all(value == 0)
    spread = np.ptp(pred.astype(np.float64), axis=axis).max() if num_classes > 1 else 0.0
    expected = reference.softmax_ce(pred, label, sample_weight=sample_weight, **kwargs)
    if spread < np.finfo(np.float32).max and np.abs(expected).max() < 1e37:
        # float32 log-probabilities err by about 1e-6 of the largest logit.
        np.testing.assert_allclose(value, expected, rtol=1e-4,
                                   atol=1e-5 * max(1.0, scale) * max(1, label.size))


@pytest.mark.parametrize("shape, axis, message", [
    ((2, 6, 7, 21), 1, r"pred has 6 classes along axis 1 \(shape \(2, 6, 7, 21\)\) but class_weight "
                       r"has length 21; pred looks laid out as \(B, H, W, C\), with the classes "
                       r"along axis 3: pass axis=-1"),
    ((2, 21, 6, 7), -1, r"pred looks laid out as \(B, C, H, W\), with the classes along axis 1: "
                        r"pass axis=1"),
    ((21, 8), -1, r"pred looks laid out as \(C, N\), with the classes along axis 0: pass axis=0"),
])
def test_class_count_error_names_the_layout(shape, axis, message):
    loss = WeightedSoftmaxCELoss(class_weight=np.ones(21), axis=axis)
    pred = mx.nd.zeros(shape)
    label_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    with pytest.raises(ValueError, match=message):
        loss(pred, mx.nd.zeros(label_shape))
    with pytest.raises(ValueError, match=r"has length 21$"):  # no other axis fits: no hint
        WeightedSoftmaxCELoss(class_weight=np.ones(21), axis=axis)(
            mx.nd.zeros(tuple(s if s != 21 else 5 for s in shape)),
            mx.nd.zeros(tuple(s for s in label_shape)))
