"""CenterLoss moves the centers by Eq. 4 whatever the head gradient: every backward form
users write, on one and two contexts, against a float64 Eq. 4 after 1 and 3 steps, while
the feature gradient follows the head gradient as any loss's does."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import CenterLoss, WeightedSoftmaxCELoss
from reference import eq4_reference, loss_reference

NUM_CLASSES, FEATURE_DIM, ALPHA, WEIGHT = 5, 3, 0.5, 0.3
CE = WeightedSoftmaxCELoss()


def reduce_mean(loss, logits, y):
    return loss.mean()


def scale_small(loss, logits, y):
    return 0.01 * loss


def add_ce_then_mean(loss, logits, y):
    return (CE(logits, y) + loss).mean()


def per_sample(loss, logits, y):
    return loss


# Each form: how the per-sample output is turned into what backward() is called on, and
# the head gradient each sample's loss then receives (B is the samples on that context).
FORMS = {
    "L.backward()": (per_sample, lambda batch: 1.0),
    "L.mean().backward()": (reduce_mean, lambda batch: 1.0 / batch),
    "(0.01 * L).backward()": (scale_small, lambda batch: 0.01),
    "(ce + L).mean().backward()": (add_ce_then_mean, lambda batch: 1.0 / batch),
}


def train(form, contexts, dense, hybridize, batches):
    reduce, _ = FORMS[form]
    loss = CenterLoss(NUM_CLASSES, FEATURE_DIM, alpha=ALPHA, weight=WEIGHT, dense=dense)
    loss.initialize(ctx=contexts)
    if hybridize:
        loss.hybridize()
    trainer = loss.trainer()
    steps = []
    for x, y in batches:
        xs = gluon.utils.split_and_load(nd.array(x), contexts, even_split=False)
        ys = gluon.utils.split_and_load(nd.array(y), contexts, even_split=False)
        logits = [nd.ones((len(part), NUM_CLASSES), ctx=part.context) for part in ys]
        for part in xs:
            part.attach_grad()
        with autograd.record():
            heads = [reduce(loss(a, b), c, b) for a, b, c in zip(xs, ys, logits)]
        autograd.backward(heads)
        trainer.step(len(y))
        steps.append(([c.asnumpy() for c in loss.centers.list_data()],
                      np.concatenate([part.grad.asnumpy() for part in xs])))
    return steps


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "row_sparse"])
@pytest.mark.parametrize("contexts", [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]],
                         ids=["1ctx", "2ctx"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_centers_follow_eq4_and_features_follow_the_head_gradient(form, contexts, dense,
                                                                  hybridize):
    rng = np.random.RandomState(7)
    batches = [(rng.randn(8, FEATURE_DIM).astype(np.float32) * 2,
                rng.choice([0, 1, 1, 3, 4], size=8).astype(np.float32)) for _ in range(3)]
    steps = train(form, contexts, dense, hybridize, batches)
    head = FORMS[form][1](8 // len(contexts))
    ref = np.zeros((NUM_CLASSES, FEATURE_DIM))
    for (x, y), (copies, feature_grad) in zip(batches, steps):
        _, ref_grad = loss_reference(ref, x, y, WEIGHT)
        np.testing.assert_allclose(feature_grad, head * ref_grad, rtol=1e-5, atol=1e-7)
        ref = eq4_reference(ref, x, y, ALPHA)
        for copy in copies:
            np.testing.assert_allclose(copy, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(copies[0], copies[-1])


def test_a_finite_row_whose_squared_norm_overflows_still_moves_its_center():
    x = np.array([[3e38, 3e38, 3e38], [1.0, 2.0, 3.0]], np.float32)
    y = np.array([0, 1], np.float32)
    loss = CenterLoss(2, 3, alpha=0.5, weight=1e-30, dense=True)
    loss.initialize()
    trainer = loss.trainer()
    features = nd.array(x)
    features.attach_grad()
    with autograd.record():
        out = loss(features, nd.array(y))
    out.backward()
    trainer.step(2)
    np.testing.assert_allclose(loss.centers.data().asnumpy(),
                               eq4_reference(np.zeros((2, 3)), x.astype(np.float64), y, 0.5),
                               rtol=1e-6)
    # The other row's gradient is exact; the huge row's may overflow, but is never NaN.
    np.testing.assert_allclose(features.grad.asnumpy()[1], 1e-30 * x[1], rtol=1e-5)
    assert not np.isnan(features.grad.asnumpy()).any()
