"""Class weights against scikit-learn and the papers' formulas."""
import numpy as np
import pytest
import mxnet as mx

from gluon_losses import class_weights as cw


def test_inverse_frequency_equals_sklearn_balanced():
    from sklearn.utils.class_weight import compute_class_weight
    labels = np.repeat([0, 1, 2, 3], [50, 10, 2, 38])
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    np.testing.assert_allclose(cw.inverse_frequency([50, 10, 2, 38]), expected, rtol=1e-6)
    np.testing.assert_allclose(cw.inverse_frequency(labels=labels, num_classes=4), expected,
                               rtol=1e-6)


def test_inverse_frequency_hand_value():
    # n = 62, C = 3: 62 / (3 * [50, 10, 2])
    np.testing.assert_allclose(cw.inverse_frequency([50, 10, 2]),
                               [62 / 150, 62 / 30, 62 / 6], rtol=1e-6)


def test_median_frequency_from_counts():
    counts = np.array([100, 10, 1], float)
    freq = counts / counts.sum()
    np.testing.assert_allclose(cw.median_frequency(counts), np.median(freq) / freq, rtol=1e-6)


def test_median_frequency_per_image_as_in_eigen_fergus():
    # Image A: 3 pixels of class 0, 1 of class 1. Image B: 4 pixels of class 0.
    # f_0 = 7 / 8 (class 0 in both images), f_1 = 1 / 4 (only in image A).
    counter = cw.ClassCounter(num_classes=2, ignore_label=255)
    counter.update(np.array([[[0, 0], [0, 1]], [[0, 0], [0, 0]]]), per_image=True)
    np.testing.assert_array_equal(counter.counts, [7, 1])
    np.testing.assert_array_equal(counter.image_pixels, [8, 4])
    freq = np.array([7 / 8, 1 / 4])
    np.testing.assert_allclose(
        cw.median_frequency(counter.counts, image_pixels=counter.image_pixels),
        np.median(freq) / freq, rtol=1e-6)


def test_effective_number_formula_and_normalization():
    counts = np.array([5000.0, 500.0, 50.0, 5.0])
    beta = 0.999
    effective = (1 - beta ** counts) / (1 - beta)
    expected = (1 / effective) / (1 / effective).sum() * 4
    weights = cw.effective_number(counts, beta=beta)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    np.testing.assert_allclose(weights.sum(), 4, rtol=1e-6)


def test_effective_number_limits():
    counts = [300, 30, 3]
    np.testing.assert_allclose(cw.effective_number(counts, beta=0.0), [1, 1, 1], rtol=1e-6)
    inverse = cw.inverse_frequency(counts)
    near_one = cw.effective_number(counts, beta=1 - 1e-9)
    np.testing.assert_allclose(near_one, inverse / inverse.sum() * 3, rtol=1e-4)


def test_streaming_skips_ignore_label_and_accepts_ndarray_batches():
    batches = [mx.nd.array([0, 1, -1, 1]), np.array([[2, -1], [1, 1]]), [0, 0]]
    np.testing.assert_array_equal(cw.class_counts(batches, num_classes=3), [3, 4, 1])
    np.testing.assert_allclose(cw.inverse_frequency(labels=batches, num_classes=3),
                               cw.inverse_frequency([3, 4, 1]))


@pytest.mark.parametrize("method", [cw.inverse_frequency, cw.median_frequency,
                                    cw.effective_number])
def test_absent_class_gets_largest_present_weight(method):
    weights = method([40, 0, 4, 10])
    present = np.array([True, False, True, True])
    assert np.all(np.isfinite(weights))
    assert weights[1] == pytest.approx(weights[present].max())
    assert weights[2] == weights.max()


@pytest.mark.parametrize("method", [cw.inverse_frequency, cw.median_frequency,
                                    cw.effective_number])
def test_no_class_present_raises(method):
    with pytest.raises(ValueError, match="no class occurs"):
        method([0, 0, 0])


def test_bad_input_names_argument_and_value():
    with pytest.raises(ValueError, match=r"labels contains 3.0, which is outside \[0, 3\)"):
        cw.class_counts(np.array([0, 3.0]), num_classes=3)
    with pytest.raises(ValueError, match=r"counts must be finite and >= 0, got \[1.0, -2.0\]"):
        cw.inverse_frequency([1, -2])
    with pytest.raises(ValueError, match=r"beta must lie in \[0.0, 1.0\), got 1.0"):
        cw.effective_number([1, 2], beta=1.0)
    with pytest.raises(ValueError, match="pass exactly one of counts or labels"):
        cw.inverse_frequency()
    with pytest.raises(ValueError, match="num_classes is required with labels"):
        cw.inverse_frequency(labels=[0, 1])
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        cw.ClassCounter(0)


def test_weights_feed_the_loss():
    from gluon_losses import WeightedSoftmaxCELoss
    weights = cw.inverse_frequency(labels=np.array([0, 0, 0, 1]), num_classes=2)
    loss_fn = WeightedSoftmaxCELoss(class_weight=weights)
    np.testing.assert_allclose(loss_fn.class_weight.data().asnumpy(), [4 / 6, 2.0], rtol=1e-6)
