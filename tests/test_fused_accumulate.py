"""The fused operator under grad_req='add', and its label smoothing at large logits.

MXNet 1.9's library-operator interface does not tell the fused backward whether it is
to write or add its gradient, so the loss routes a leaf ``pred`` through one of MXNet's
own operators (see gluon_losses/fused/__init__.py). These tests accumulate two passes
into gradients on every path that reaches the operator and compare them with float64
references and with ``fused=False``; the smoothing tests pin the operator's loss and
gradient at logits 1e5 + N(0, 1), where a float32 mean of the logits loses the loss.
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import WeightedSoftmaxCELoss, fused
import reference

pytestmark = pytest.mark.skipif(not fused.available(), reason="fused operator unavailable: %s"
                                % fused.unavailable_reason())

HYBRID = [None, "dynamic", "static"]


def _loss(use_fused, hybrid=None, **kwargs):
    loss = WeightedSoftmaxCELoss(fused=use_fused, **kwargs)
    if hybrid:
        loss.hybridize(static_alloc=hybrid == "static", static_shape=hybrid == "static")
    return loss


def _case(seed, shape=(6, 5)):
    rng = np.random.RandomState(seed)
    pred = rng.randn(*shape).astype(np.float32) * 2
    labels = [rng.randint(0, shape[1], shape[0]).astype(np.float32) for _ in range(2)]
    return pred, labels


def _target(label, num_classes, eps):
    """The smoothed one-hot target in float64, rows of ``num_classes``."""
    target = np.full(label.shape + (num_classes,), eps / num_classes)
    np.put_along_axis(target, label.astype(np.int64)[..., None], 1 - eps + eps / num_classes,
                      axis=-1)
    return target


def _row_gradient(pred, label, eps=0.0):
    """d(sum of the output)/d(pred) in float64 for rows, normalization='valid', no
    weights and nothing ignored: each sample's output is its own loss, so the gradient is
    softmax - target."""
    prob = np.exp(reference.log_softmax(pred.astype(np.float64)))
    return prob - _target(label, pred.shape[1], eps)


def _assert_gradient(actual, expected, atol=2e-6):
    # The fused float32 softmax errs by about 1e-7 per pass; the graph's log_softmax by
    # about 1e-6 at these logits (|x| up to 6).
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


def _assert_accumulates_both_passes(block, pred, labels):
    """Two backward passes of ``block(x, label)`` into x.grad with grad_req='add' sum."""
    x = nd.array(pred)
    x.attach_grad(grad_req="add")
    for label in labels:
        with autograd.record():
            out = block(x, nd.array(label))
        out.backward()
    _assert_gradient(x.grad.asnumpy(),
                     _row_gradient(pred, labels[0]) + _row_gradient(pred, labels[1]))
    return x


# --- A: grad_req='add' where the fused backward's gradient is the leaf's ----------------

@pytest.mark.parametrize("hybrid", HYBRID)
def test_leaf_with_grad_req_add_accumulates_both_passes(hybrid):
    pred, labels = _case(0)
    loss = _loss(None, hybrid)
    x = nd.array(pred)
    x.attach_grad(grad_req="add")
    start = np.linspace(-1, 1, pred.size).reshape(pred.shape).astype(np.float32)
    x.grad[:] = start  # what an earlier pass left: the passes add to it
    for label in labels:
        with autograd.record():
            out = loss(x, nd.array(label))
        out.backward()
    assert loss._use_fused
    expected = start + _row_gradient(pred, labels[0]) + _row_gradient(pred, labels[1])
    _assert_gradient(x.grad.asnumpy(), expected)

    graph = _loss(False, hybrid)
    y = nd.array(pred)
    y.attach_grad(grad_req="add")
    y.grad[:] = start
    for label in labels:
        with autograd.record():
            out = graph(y, nd.array(label))
        out.backward()
    _assert_gradient(y.grad.asnumpy(), expected, atol=5e-6)  # the graph: MXNet's operators


@pytest.mark.parametrize("hybrid", HYBRID)
def test_leaf_with_grad_req_write_keeps_the_last_pass_only(hybrid):
    pred, labels = _case(1)
    loss = _loss(None, hybrid)
    x = nd.array(pred)
    x.attach_grad()
    for label in labels:
        with autograd.record():
            out = loss(x, nd.array(label))
        out.backward()
    assert loss._use_fused
    _assert_gradient(x.grad.asnumpy(), _row_gradient(pred, labels[1]))


def test_parameter_data_fed_straight_in_accumulates():
    pred, labels = _case(2)
    logits = gluon.Parameter("logits", shape=pred.shape, grad_req="add")
    logits.initialize(mx.init.Constant(0))
    logits.set_data(nd.array(pred))
    loss = _loss(None)
    for label in labels:
        with autograd.record():
            out = loss(logits.data(), nd.array(label))
        out.backward()
    _assert_gradient(logits.grad().asnumpy(),
                     _row_gradient(pred, labels[0]) + _row_gradient(pred, labels[1]))


@pytest.mark.parametrize("hybrid", [False, True])
def test_dense_parameters_with_grad_req_add_upstream(hybrid):
    """pred is a network's output, not a leaf: the Dense backward accumulates, as it
    always did; fused and fused=False agree with the float64 chain rule."""
    rng = np.random.RandomState(3)
    data = rng.randn(6, 4).astype(np.float32)
    weight = rng.randn(5, 4).astype(np.float32)
    bias = rng.randn(5).astype(np.float32)
    labels = [rng.randint(0, 5, 6).astype(np.float32) for _ in range(2)]
    grads = {}
    for use_fused in (None, False):
        net = gluon.nn.Dense(5, in_units=4)
        net.initialize()
        net.weight.set_data(nd.array(weight))
        net.bias.set_data(nd.array(bias))
        net.collect_params().setattr("grad_req", "add")
        loss = _loss(use_fused)
        if hybrid:
            net.hybridize()
            loss.hybridize()
        for label in labels:
            with autograd.record():
                out = loss(net(nd.array(data)), nd.array(label))
            out.backward()
        assert loss._use_fused == (use_fused is None)
        grads[use_fused] = (net.weight.grad().asnumpy(), net.bias.grad().asnumpy())
    logits = data.astype(np.float64) @ weight.T.astype(np.float64) + bias
    upstream = sum(_row_gradient(logits, label) for label in labels)
    for use_fused, (weight_grad, bias_grad) in grads.items():
        np.testing.assert_allclose(weight_grad, upstream.T @ data, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bias_grad, upstream.sum(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[None][0], grads[False][0], rtol=1e-5, atol=1e-5)


class _Outer(gluon.HybridBlock):
    """A block whose graph holds the loss: the fused node is composed on symbols."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def hybrid_forward(self, F, x, label):
        return self.loss(x, label)


@pytest.mark.parametrize("static", [False, True])
def test_loss_inside_a_hybridized_block_accumulates_into_its_input(static):
    pred, labels = _case(4)
    loss = _loss(None)
    loss(nd.array(pred), nd.array(labels[0]))  # an imperative call picks the fused path
    assert loss._use_fused
    outer = _Outer(loss)
    outer.hybridize(static_alloc=static, static_shape=static)
    _assert_accumulates_both_passes(outer, pred, labels)
    assert "gluon_losses_softmax_ce" in outer._cached_graph[1].tojson()


def test_a_network_output_reaches_the_operator_unwrapped():
    """The guard costs nothing where it is not needed: a non-leaf pred goes to the
    operator as it is, and a leaf is only wrapped while autograd records."""
    x = nd.ones((2, 3))
    x.attach_grad()
    assert fused.gradient_input(x) is x  # not recording
    with autograd.record():
        hidden = x * 2
        assert fused.gradient_input(hidden) is hidden
        wrapped = fused.gradient_input(x)
    assert wrapped is not x and wrapped.shape == x.shape


# Two cases the loss cannot see (docs/fused.md, Limits): strict, so that a fix shows.

class _Many(gluon.HybridBlock):
    def __init__(self, loss, count):
        super().__init__()
        self.loss, self.count = loss, count

    def hybrid_forward(self, F, x, *labels):
        logits = x * 2  # an inner node: its gradient sums the losses' in one buffer
        return F.add_n(*[self.loss(logits, label) for label in labels[:self.count]])


@pytest.mark.xfail(strict=True, reason="a static_alloc graph sums 8 or more gradients of "
                   "one entry in place, and the fused backward's are lost")
def test_eight_fused_losses_on_one_logits_in_a_static_graph():
    rng = np.random.RandomState(6)
    pred = rng.randn(6, 5).astype(np.float32)
    labels = [rng.randint(0, 5, 6).astype(np.float32) for _ in range(8)]
    loss = _loss(None)
    loss(nd.array(pred), nd.array(labels[0]))
    block = _Many(loss, 8)
    block.hybridize(static_alloc=True)
    x = nd.array(pred)
    x.attach_grad()
    with autograd.record():
        out = block(x, *[nd.array(label) for label in labels])
    out.backward()
    expected = 2 * sum(_row_gradient(2 * pred, label) for label in labels)
    _assert_gradient(x.grad.asnumpy(), expected, atol=1e-5)


def test_exported_fused_graph_with_grad_req_add(tmp_path):
    pred, labels = _case(7)
    loss = _loss(None, "dynamic")
    loss(nd.array(pred), nd.array(labels[0]))
    prefix = str(tmp_path / "fused")
    loss.export(prefix, fused=True)
    block = gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data0", "data1"],
                                      prefix + "-0000.params")
    _assert_accumulates_both_passes(block, pred, labels)


# --- B: label smoothing at large logits --------------------------------------------------

def _smoothing_case(shape, seed=5):
    rng = np.random.RandomState(seed)
    pred = (1e5 + rng.randn(*shape)).astype(np.float32)
    classes = shape[1]
    label_shape = shape[:1] + shape[2:]
    label = rng.randint(0, classes, label_shape).astype(np.float32)
    return pred, label


@pytest.mark.parametrize("shape, axis", [((64, 10), -1), ((64, 1000), -1), ((4, 10, 3, 5), 1)])
def test_label_smoothing_at_logits_near_1e5_matches_float64(shape, axis):
    """max - mean(logits) taken from float32 sums near 1e5 erred by 1e-4 of the loss
    (5e-4 on a sample); from float64 sums of logit - max it is at float32 rounding."""
    pred, label = _smoothing_case(shape)
    eps = 0.1
    value, grad = reference.run_loss(_loss(True, label_smoothing=eps, axis=axis), pred, label)
    expected = reference.softmax_ce(pred, label, axis=axis, label_smoothing=eps)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=0)
    moved = np.moveaxis(pred, axis, -1)
    positions = label.size / label.shape[0]  # 'valid': each sample's output is a mean
    expected_grad = np.moveaxis(_row_gradient(moved.reshape(-1, shape[axis]), label.ravel(), eps)
                                .reshape(moved.shape), -1, axis) / positions
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5 * np.abs(
        expected_grad).max())


def test_label_smoothing_at_the_float32_limit_stays_finite_and_exact():
    """Logits of both signs near 3e38: their differences overflow float32 but not the
    float64 sum, and the loss is a finite float32 value close to the reference."""
    pred = np.array([[3e38, -3e38, 0.0, 1.0], [-3e38, 2e38, 3e38, -1e38]], np.float32)
    label = np.array([0, 2], np.float32)
    value, grad = reference.run_loss(_loss(True, label_smoothing=0.1), pred, label)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    expected = reference.softmax_ce(pred, label, label_smoothing=0.1)
    np.testing.assert_allclose(value, expected, rtol=1e-6)


@pytest.mark.parametrize("hybridize", [False, True])
def test_sample_weight_with_a_gradient_is_refused_on_the_fused_path_and_trained_on_the_graph(
        hybridize):
    """The fused operator has no gradient for sample_weight: asking for one raises,
    naming the fix, instead of a silent zero; fused=False gives the true gradient."""
    rng = np.random.RandomState(11)
    pred = nd.array(rng.randn(4, 3))
    label = nd.array([0, 2, 1, 2])
    weights = rng.uniform(0.5, 2.0, size=(4,)).astype(np.float32)
    fused_loss = WeightedSoftmaxCELoss(normalization="none", fused=True)
    graph_loss = WeightedSoftmaxCELoss(normalization="none", fused=False)
    if hybridize:
        fused_loss.hybridize()
        graph_loss.hybridize()
    sample_weight = nd.array(weights)
    sample_weight.attach_grad()
    with autograd.record():
        with pytest.raises(ValueError, match="sample_weight.*fused=False"):
            fused_loss(pred, label, sample_weight)
        value = graph_loss(pred, label, sample_weight)
    value.backward()
    # d(w_i * l_i)/d w_i = l_i, the unweighted loss
    log_p = pred.asnumpy() - np.log(np.exp(pred.asnumpy()).sum(axis=1, keepdims=True))
    unweighted = -log_p[np.arange(4), label.asnumpy().astype(int)]
    np.testing.assert_allclose(sample_weight.grad.asnumpy(), unweighted, rtol=1e-5)
    # detached weights (the usual case) still run fused
    with autograd.record():
        fused_value = fused_loss(pred, label, sample_weight.detach())
    np.testing.assert_allclose(fused_value.asnumpy(), value.asnumpy(), rtol=1e-5)


@pytest.mark.parametrize("static", [False, True])
def test_leaf_and_network_output_alternate_on_one_hybridized_loss(static):
    """The graph takes pred through identity only while leaves come in: a leaf with
    grad_req='add', then a network's output, then the leaf again, each gradient right."""
    pred, labels = _case(9)
    loss = _loss(None)
    loss.hybridize(static_alloc=static, static_shape=static)
    x = _assert_accumulates_both_passes(loss, pred, labels)
    first = _row_gradient(pred, labels[0]) + _row_gradient(pred, labels[1])
    w = nd.array(pred)
    w.attach_grad()
    with autograd.record():
        value = loss(w * 2, nd.array(labels[0]))  # not a leaf
    value.backward()
    _assert_gradient(w.grad.asnumpy(), 2 * _row_gradient(2 * pred, labels[0]))
    with autograd.record():
        value = loss(x, nd.array(labels[0]))
    value.backward()
    _assert_gradient(x.grad.asnumpy(), first + _row_gradient(pred, labels[0]))
