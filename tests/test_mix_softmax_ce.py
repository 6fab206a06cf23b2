"""MixWeightedSoftmaxCELoss against GluonCV's MixSoftmaxCrossEntropyLoss and float64 references."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd

from gluon_losses import MixWeightedSoftmaxCELoss
from reference import numeric_gradient, softmax_ce

B, C, H, W = 2, 4, 5, 6
WEIGHTS = np.array([0.5, 1.0, 2.0, 4.0], np.float32)


def _segmentation_batch(seed=0):
    """Main and auxiliary logits (B, C, H, W) and a label with -1 void rows, columns and pixels."""
    rng = np.random.RandomState(seed)
    pred = rng.randn(B, C, H, W).astype(np.float32) * 2
    aux_pred = rng.randn(B, C, H, W).astype(np.float32) * 2
    label = rng.randint(0, C, (B, H, W)).astype(np.float32)
    label[:, 0, :] = -1
    label[0, :, 0] = -1
    label[1, 3, 4] = -1
    return pred, aux_pred, label


def _run(loss, *arrays):
    """Value and the gradient of every prediction after ``loss.backward()``."""
    inputs = [mx.nd.array(a) for a in arrays]
    for x in inputs[:-1]:
        x.attach_grad()
    with autograd.record():
        out = loss(*inputs)
    out.backward()
    return (out.asnumpy(),) + tuple(x.grad.asnumpy() for x in inputs[:-1])


def _gluoncv_mix(aux, aux_weight):
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss
    return MixSoftmaxCrossEntropyLoss(aux=aux, aux_weight=aux_weight, ignore_label=-1)


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("aux", [True, False])
def test_unit_weight_value_equals_gluoncv(aux, hybridize):
    pred, aux_pred, label = _segmentation_batch()
    inputs = (pred, aux_pred, label) if aux else (pred, label)
    ours = MixWeightedSoftmaxCELoss(aux=aux, aux_weight=0.3)
    theirs = _gluoncv_mix(aux, 0.3)
    if hybridize:
        ours.hybridize()  # GluonCV's cannot be (it reads pred.dtype of a Symbol)
    expected = _run(theirs, *inputs)[0]
    np.testing.assert_allclose(_run(ours, *inputs)[0], expected, rtol=1e-5)
    # class weights of ones through the parameter path give the same value
    weighted = MixWeightedSoftmaxCELoss(class_weight=np.ones(C), aux=aux, aux_weight=0.3)
    np.testing.assert_allclose(_run(weighted, *inputs)[0], expected, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["batch", "valid", "weight", "null"])
def test_weighted_value_is_main_plus_aux_weight_times_aux(normalization):
    pred, aux_pred, label = _segmentation_batch(1)
    loss = MixWeightedSoftmaxCELoss(class_weight=WEIGHTS, aux_weight=0.4,
                                    normalization=normalization)
    loss.hybridize()
    expected = sum(scale * softmax_ce(p, label, class_weight=WEIGHTS, axis=1,
                                      normalization=normalization)
                   for scale, p in ((1.0, pred), (0.4, aux_pred)))
    np.testing.assert_allclose(_run(loss, pred, aux_pred, label)[0], expected, rtol=1e-5)


def test_none_normalization_returns_per_pixel_losses():
    pred, aux_pred, label = _segmentation_batch(2)
    out = _run(MixWeightedSoftmaxCELoss(class_weight=WEIGHTS, normalization="none"),
               pred, aux_pred, label)[0]
    expected = softmax_ce(pred, label, WEIGHTS, axis=1, normalization="none") + 0.2 * softmax_ce(
        aux_pred, label, WEIGHTS, axis=1, normalization="none")
    assert out.shape == (B, H, W)
    # The graph's float32 log_softmax errs by a few 1e-6 of the largest log-probability.
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6 * np.abs(expected).max())


def _analytic_gradient(pred, label, weights, scale):
    """B * w_y (p - onehot(y)) / Z with Z = B H W ('batch'): the gradient of the summed output."""
    logits = np.moveaxis(pred.astype(np.float64), 1, -1)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    keep = label != -1
    index = np.where(keep, label, 0).astype(int)
    onehot = np.eye(C)[index]
    grad = (prob - onehot) * (weights[index] * keep)[..., None] * B / label.size
    return np.moveaxis(grad * scale, -1, 1)


@pytest.mark.parametrize("hybridize", [False, True])
def test_gradient_is_the_gradient_of_the_value(hybridize):
    pred, aux_pred, label = _segmentation_batch(3)
    loss = MixWeightedSoftmaxCELoss(class_weight=WEIGHTS, aux_weight=0.3)
    if hybridize:
        loss.hybridize()
    _, main_grad, aux_grad = _run(loss, pred, aux_pred, label)
    np.testing.assert_allclose(main_grad, _analytic_gradient(pred, label, WEIGHTS, 1.0),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(aux_grad, _analytic_gradient(aux_pred, label, WEIGHTS, 0.3),
                               rtol=1e-4, atol=1e-7)
    # and both agree with central differences of the float64 value
    numeric = numeric_gradient(lambda p: softmax_ce(p, label, WEIGHTS, axis=1,
                                                    normalization="batch").sum(), pred)
    np.testing.assert_allclose(main_grad, numeric, rtol=1e-4, atol=1e-6)


def test_gluoncv_gradient_ignores_aux_weight_and_head_gradient():
    """What the docs state about GluonCV's loss, checked on GluonCV's own code."""
    pred, aux_pred, label = _segmentation_batch(4)
    _, main_grad, aux_grad = _run(_gluoncv_mix(True, 0.3), pred, aux_pred, label)
    valid = np.count_nonzero(label != -1)
    ones = np.ones(C, np.float32)
    np.testing.assert_allclose(main_grad, _analytic_gradient(pred, label, ones, 1.0)
                               * label.size / (B * valid), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(aux_grad, _analytic_gradient(aux_pred, label, ones, 1.0)
                               * label.size / (B * valid), rtol=1e-4, atol=1e-7)
    # Matched on value (unit weights, 'batch'), the main-head gradient here is
    # valid / (H W) = B * (valid fraction) times GluonCV's.
    _, ours_main, ours_aux = _run(MixWeightedSoftmaxCELoss(aux_weight=0.3), pred, aux_pred, label)
    np.testing.assert_allclose(ours_main, main_grad * valid / (H * W), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(ours_aux, 0.3 * aux_grad * valid / (H * W), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("hybridize", [False, True])
def test_valid_aux_one_and_batch_scale_reproduce_gluoncv_gradient(hybridize):
    pred, aux_pred, label = _segmentation_batch(5)
    theirs = _run(_gluoncv_mix(True, 0.3), pred, aux_pred, label)
    loss = MixWeightedSoftmaxCELoss(normalization="valid", aux_weight=1.0, weight=1.0 / B)
    if hybridize:
        loss.hybridize()
    ours = _run(loss, pred, aux_pred, label)
    # Two float32 log_softmax kernels (ours along the last axis after a transpose).
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-5, atol=1e-7)


def test_export_and_symbol_call(tmp_path):
    pred, aux_pred, label = _segmentation_batch(6)
    loss = MixWeightedSoftmaxCELoss(class_weight=WEIGHTS, aux_weight=0.25)
    loss.hybridize()
    expected = _run(loss, pred, aux_pred, label)[0]
    loss.export(str(tmp_path / "mix"))
    imported = mx.gluon.SymbolBlock.imports(str(tmp_path / "mix-symbol.json"),
                                            ["data0", "data1", "data2"],
                                            str(tmp_path / "mix-0000.params"))
    out = imported(mx.nd.array(pred), mx.nd.array(aux_pred), mx.nd.array(label))
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-6)
    symbol = loss(mx.sym.var("p"), mx.sym.var("a"), mx.sym.var("y"))
    assert set(symbol.list_arguments()) >= {"p", "a", "y"}


def test_bad_calls_name_the_problem():
    pred, aux_pred, label = _segmentation_batch()
    with pytest.raises(ValueError, match=r"aux=True\) is called as criterion\(pred, aux_pred, "
                                         r"label\), got 2 inputs"):
        MixWeightedSoftmaxCELoss()(mx.nd.array(pred), mx.nd.array(label))
    with pytest.raises(ValueError, match=r"aux_pred has shape \(2, 4, 5, 3\) but pred has "
                                         r"shape \(2, 4, 5, 6\)"):
        MixWeightedSoftmaxCELoss()(mx.nd.array(pred), mx.nd.array(aux_pred[..., :3]),
                                   mx.nd.array(label))
    with pytest.raises(ValueError, match=r"aux_weight must .*, got -1"):
        MixWeightedSoftmaxCELoss(aux_weight=-1)
    with pytest.raises(ValueError, match="aux must be True or False, got 'yes'"):
        MixWeightedSoftmaxCELoss(aux="yes")
    # GluonCV's masks carry -1 for void: ignore_label=255 sees -1 as a bad label
    with pytest.raises(ValueError, match=r"label contains -1.0, which is outside \[0, 4\) and "
                                         r"is not ignore_label=255"):
        MixWeightedSoftmaxCELoss(ignore_label=255)(mx.nd.array(pred), mx.nd.array(aux_pred),
                                                   mx.nd.array(label))


def test_ignore_label_255_on_gluoncv_masks_is_nan_when_hybridized():
    pred, aux_pred, label = _segmentation_batch()
    loss = MixWeightedSoftmaxCELoss(ignore_label=255)
    loss.hybridize()
    out = loss(mx.nd.array(pred), mx.nd.array(aux_pred), mx.nd.array(label)).asnumpy()
    assert np.isnan(out).all()
    # and the right setting on the same labels is finite
    assert np.isfinite(_run(MixWeightedSoftmaxCELoss(), pred, aux_pred, label)[0]).all()


def test_gluoncv_train_py_call_drops_in():
    """GluonCV's segmentation train.py: MixSoftmaxCrossEntropyLoss(args.aux,
    aux_weight=args.aux_weight), positional aux first; the same call builds ours."""
    pred, aux_pred, label = _segmentation_batch(2)
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss
    for aux, kwargs in ((True, {}), (True, {"aux_weight": 0.5}),
                        (True, {"aux_weight": 0.5, "ignore_label": -1}), (False, {})):
        ours = MixWeightedSoftmaxCELoss(aux, **kwargs)
        theirs = MixSoftmaxCrossEntropyLoss(aux, **kwargs)
        inputs = (pred, aux_pred, label) if aux else (pred, label)
        np.testing.assert_allclose(_run(ours, *inputs)[0], _run(theirs, *inputs)[0], rtol=1e-5)
    ours = MixWeightedSoftmaxCELoss(True, aux_weight=0.5, class_weight=WEIGHTS)
    assert ours.aux and ours.aux_weight == 0.5 and ours.num_classes == C
    with pytest.raises(TypeError):  # GluonCV's second positional is mixup: not silently taken
        MixWeightedSoftmaxCELoss(True, False)
    with pytest.raises(ValueError, match=r"aux must be True or False, got \[1, 2\] .*pass "
                                         r"class weights by keyword, class_weight="):
        MixWeightedSoftmaxCELoss([1, 2])


def test_numpy_heads_equal_ndarray_heads():
    pred, aux_pred, label = _segmentation_batch(3)
    loss = MixWeightedSoftmaxCELoss(class_weight=WEIGHTS)
    expected = loss(mx.nd.array(pred), mx.nd.array(aux_pred), mx.nd.array(label)).asnumpy()
    np.testing.assert_array_equal(loss(pred, aux_pred, label).asnumpy(), expected)
    np.testing.assert_array_equal(loss(mx.nd.array(pred), aux_pred.tolist(), label).asnumpy(),
                                  expected)


def test_aux_pred_on_another_context_is_refused():
    pred, aux_pred, label = _segmentation_batch(4)
    with pytest.raises(ValueError, match=r"aux_pred is on cpu\(1\) but pred is on cpu\(0\)"):
        MixWeightedSoftmaxCELoss()(mx.nd.array(pred, ctx=mx.cpu(0)),
                                   mx.nd.array(aux_pred, ctx=mx.cpu(1)), mx.nd.array(label))
