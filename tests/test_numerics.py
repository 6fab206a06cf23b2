"""Edge values of WeightedSoftmaxCELoss against float64: ties of the focal loss, one
class, a global weight of 0, losses near float32's largest number, on every path."""
import numpy as np
import pytest
import mxnet as mx

from gluon_losses import WeightedSoftmaxCELoss, fused
from loopback_cluster import run_python
from reference import reference_grad, run_loss, softmax_ce

PATHS = [pytest.param(False, id="graph"),
         pytest.param(True, id="fused",
                      marks=pytest.mark.skipif(not fused.available(),
                                               reason="fused operator not built"))]


def _loss(hybridize, **kwargs):
    loss = WeightedSoftmaxCELoss(**kwargs)
    if hybridize:
        loss.hybridize()
    return loss


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("logits, label", [
    ([[0.0, 0.0]], [0]),            # p = 1/2 exactly: log_softmax rounds log(1/2) up
    ([[0.0, 1e-6]], [0]),           # a near-tie below the top
    ([[1e-6, 0.0]], [0]),           # a near-tie at the top
    ([[5.0, 5.0, -20.0]], [0]),     # two tied maxima, a third class far below
    ([[5.0, 5.0, -20.0]], [2]),
    ([[3.0, 3.0, 3.0, 3.0]], [1]),  # every class tied
])
def test_focal_loss_at_tied_top_logits_matches_float64(logits, label, hybridize):
    pred, label = np.array(logits, np.float32), np.array(label, np.float32)
    loss = _loss(hybridize, gamma=2.0, normalization="none")
    value, grad = run_loss(loss, pred, label)
    expected = softmax_ce(pred, label, gamma=2.0, normalization="none")
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, reference_grad(pred, label, gamma=2.0,
                                                    normalization="none"), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_loss_property_over_ties_and_near_ties(dtype, gamma):
    """Logits drawn from a handful of values (float16 rounds many logits onto each other)
    plus offsets of a few ulps: every value and gradient against float64."""
    rng = np.random.RandomState(int(gamma * 10) + np.dtype(dtype).itemsize)
    for trial in range(20):
        classes = rng.randint(2, 6)
        base = rng.choice([-2.0, 0.0, 0.5, 3.0], size=(6, classes))
        nudge = rng.choice([0.0, 0.0, 1e-6, -1e-6, 1e-3], size=base.shape)
        pred = (base + nudge).astype(dtype)
        label = rng.randint(0, classes, size=6).astype(np.float32)
        kwargs = dict(gamma=gamma, normalization="none")
        value, grad = run_loss(_loss(trial % 2 == 1, **kwargs), pred, label)
        reference_input = pred.astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(value, softmax_ce(reference_input, label, **kwargs),
                                   rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(grad, reference_grad(reference_input, label, **kwargs),
                                   rtol=1e-3, atol=2e-5)


def test_focal_training_moves_zero_initialised_weights():
    """A Dense(2) that starts at 0 gives tied logits: a focal loss must still train it."""
    data = mx.nd.array(np.random.RandomState(3).randn(16, 4))
    label = mx.nd.array(np.arange(16) % 2)
    net = mx.gluon.nn.Dense(2, in_units=4, weight_initializer="zeros")
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    loss = WeightedSoftmaxCELoss(gamma=2.0)
    with mx.autograd.record():
        value = loss(net(data), label)
    value.backward()
    trainer.step(16)
    assert np.abs(net.weight.data().asnumpy()).max() > 1e-3


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("normalization", ["valid", "batch", "none"])
def test_one_class_gives_exact_zeros(use_fused, normalization):
    pred = np.array([[0.3], [-5.0], [1e5]], np.float32)
    label = np.zeros(3, np.float32)
    for hybridize in (False, True):
        loss = _loss(hybridize, normalization=normalization, fused=use_fused)
        value, grad = run_loss(loss, pred, label)
        np.testing.assert_array_equal(value, np.zeros_like(value))
        np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_one_class_then_several_on_one_hybridized_loss():
    loss = _loss(True, fused=False)
    np.testing.assert_array_equal(run_loss(loss, np.ones((2, 1), np.float32),
                                           np.zeros(2, np.float32))[0], [0, 0])
    pred = np.array([[0.0, 1.0], [2.0, 0.0]], np.float32)
    label = np.array([1, 0], np.float32)
    # MXNet's log_softmax is about 1.4e-6 high: an absolute tolerance
    np.testing.assert_allclose(run_loss(loss, pred, label)[0], softmax_ce(pred, label),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparse_label", [True, False])
def test_global_weight_zero_gives_exact_zeros_and_no_crash(sparse_label):
    """weight=0 killed the process in backward (an unconnected zeros_like); it must give
    exact zeros, also where the unweighted loss is infinite."""
    result = run_python("""
        import numpy as np, mxnet as mx
        from gluon_losses import WeightedSoftmaxCELoss
        label = mx.nd.array([[0., 1.]] if not %(sparse)s else [1])
        for fused in (None, False):
            for hybridize in (False, True):
                for logits in ([[1., 2.]], [[3e38, -3e38]]):
                    loss = WeightedSoftmaxCELoss(sparse_label=%(sparse)s, weight=0.,
                                                 fused=fused)
                    if hybridize:
                        loss.hybridize()
                    x = mx.nd.array(logits)
                    x.attach_grad()
                    with mx.autograd.record():
                        value = loss(x, label)
                    value.backward()
                    assert (value.asnumpy() == 0).all(), value
                    assert (x.grad.asnumpy() == 0).all(), x.grad
        print("ok")
    """ % {"sparse": sparse_label}, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("use_fused", PATHS)
def test_mean_of_losses_near_float32_max_is_finite(use_fused):
    """Two positions of loss 2e38: the per-sample mean is 2e38, though their sum is not
    a float32."""
    pred = np.array([[[0.0, -2e38], [0.0, -2e38]]], np.float32)
    label = np.array([[1, 1]], np.float32)
    for normalization in ("batch", "valid"):  # "null" sums them: 4e38 is not a float32
        loss = _loss(False, normalization=normalization, fused=use_fused)
        value, grad = run_loss(loss, pred, label)
        np.testing.assert_allclose(value, softmax_ce(pred, label, normalization=normalization),
                                   rtol=1e-6)
        assert np.isfinite(grad).all()


@pytest.mark.parametrize("sparse_label", [True, False])
def test_focal_loss_near_float32_max_has_finite_gradients(sparse_label):
    """Losses up to about 3e38 (logits spread up to float32's range): gamma times the
    loss overflows, and the gradient must not be NaN."""
    rng = np.random.RandomState(5)
    for trial in range(30):
        classes = rng.randint(2, 5)
        pred = rng.choice([-1.5e38, 1.5e38, 0.0, 1.0, -1e38], size=(3, classes)).astype(np.float32)
        label = (rng.randint(0, classes, size=3) if sparse_label
                 else rng.dirichlet(np.ones(classes), size=3)).astype(np.float32)
        sample_weight = rng.choice([1.0, -1.0, 0.5], size=(3, 1)).astype(np.float32)
        loss = WeightedSoftmaxCELoss(rng.uniform(0.1, 1, classes), sparse_label=sparse_label,
                                     gamma=2.0, label_smoothing=0.1, normalization="batch")
        value, grad = run_loss(loss, pred, label, sample_weight[:, 0] if sparse_label
                               else sample_weight)
        assert np.isfinite(value).all() and np.isfinite(grad).all(), (pred, label)


def test_focal_gradient_of_a_huge_loss_points_the_right_way():
    pred = np.array([[1.0, 3e38]], np.float32)
    value, grad = run_loss(WeightedSoftmaxCELoss(gamma=2.0), pred, np.array([0], np.float32))
    np.testing.assert_allclose(value, [3e38], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-1.0, 1.0]], rtol=1e-5)


def test_fused_must_be_a_bool_or_none():
    for bad in (1, 0, "yes", 1.0):
        with pytest.raises(ValueError, match=r"fused must be None, True or False, got %r"
                           % (bad,)):
            WeightedSoftmaxCELoss(fused=bad)


@pytest.mark.parametrize("use_fused", PATHS)
def test_batch_axis_out_of_range_names_it(use_fused):
    loss = WeightedSoftmaxCELoss(batch_axis=-2, fused=use_fused)
    with pytest.raises(ValueError, match=r"batch_axis=-2 is out of range for the label's 1 "
                                         r"dimension"):
        loss(mx.nd.ones((2, 3)), mx.nd.zeros(2))
    pred = np.random.RandomState(2).randn(3, 2, 4).astype(np.float32)
    label = np.array([[0, 1], [2, 3], [1, 1]], np.float32)
    value, _ = run_loss(WeightedSoftmaxCELoss(batch_axis=-1, fused=use_fused), pred, label)
    np.testing.assert_allclose(value, softmax_ce(pred, label, batch_axis=1), rtol=1e-5)


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("pred_shape, axis, ambiguous, per_sample, per_position", [
    ((4, 4, 3), -1, (4, 1), (4, 1, 1), (1, 4, 1)),            # (B, N, C) with B == N
    ((2, 5, 5, 3), -1, (1, 5, 1), (1, 5, 1, 1), (1, 1, 5, 1)),  # NHWC with H == W
])
def test_sample_weight_shapes_two_rules_read_differently_are_refused(
        use_fused, pred_shape, axis, ambiguous, per_sample, per_position):
    """Read by coincident sizes, (4, 1) was applied per sample where gluon applies it per
    position; now refused, and the unambiguous forms equal gluon's loss."""
    rng = np.random.RandomState(8)
    pred = rng.randn(*pred_shape).astype(np.float32)
    label = rng.randint(0, 3, pred_shape[:-1]).astype(np.float32)
    loss = WeightedSoftmaxCELoss(axis=axis, normalization="batch", fused=use_fused)
    with pytest.raises(ValueError, match=r"sample_weight has shape %s, which is ambiguous .*"
                                         r"pass %s.*pass %s" % (
                                             re_shape(ambiguous), re_shape(per_sample),
                                             re_shape(per_position))):
        loss(mx.nd.array(pred), mx.nd.array(label), mx.nd.array(np.ones(ambiguous)))
    gluon_loss = mx.gluon.loss.SoftmaxCrossEntropyLoss(axis=axis)
    weights = rng.uniform(0.5, 2.0, ambiguous).astype(np.float32)
    for shape in (per_sample, per_position):
        arrays = [mx.nd.array(a) for a in (pred, label, weights.reshape(shape))]
        np.testing.assert_allclose(loss(*arrays).asnumpy(), gluon_loss(*arrays).asnumpy(),
                                   rtol=2e-5)
    # gluon's own reading of the ambiguous shape is the per-position one
    np.testing.assert_allclose(
        gluon_loss(*[mx.nd.array(a) for a in (pred, label, weights)]).asnumpy(),
        loss(*[mx.nd.array(a) for a in (pred, label, weights.reshape(per_position))]).asnumpy(),
        rtol=2e-5)


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
