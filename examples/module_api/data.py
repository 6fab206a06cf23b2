"""Data for the example: generated RoI features (RCNN head) and scikit-learn digits.

Everything is NumPy: ``(features or images float32, labels float32)``; nothing is
downloaded.
"""
import numpy as np

from examples.center_loss.data import load_digits

IGNORE = -1


def roi_batches(num_images, rois_per_image=64, num_classes=6, feature_dim=32,
                class_share=(0.7, 0.12, 0.08, 0.05, 0.03, 0.02), unsampled=0.25, seed=0):
    """RoI features ``(num_images, R, F)`` and labels ``(num_images, R)`` like a detector's head.

    Class 0 is background and most RoIs are background; the object classes get the
    shares in ``class_share`` (imbalanced). A fraction ``unsampled`` of the RoIs carry
    the ignore label -1, as unsampled proposals do in GluonCV's and MXNet's RCNN
    targets. Each class has a mean feature vector; RoIs are that mean plus unit noise.
    """
    share = np.asarray(class_share, dtype=np.float64)
    if share.size != num_classes or not np.isclose(share.sum(), 1.0):
        raise ValueError("class_share must hold num_classes=%d shares summing to 1, got %r"
                         % (num_classes, class_share))
    rng = np.random.RandomState(seed)
    means = np.random.RandomState(1234).randn(num_classes, feature_dim) * 0.7
    labels = rng.choice(num_classes, size=(num_images, rois_per_image), p=share)
    features = means[labels] + rng.randn(num_images, rois_per_image, feature_dim)
    labels = np.where(rng.rand(num_images, rois_per_image) < unsampled, IGNORE, labels)
    return features.astype(np.float32), labels.astype(np.float32)


def digits():
    """scikit-learn's 8x8 digits, split as ``examples.center_loss`` does:
    ``((x_train, y_train), (x_test, y_test))`` with images ``(N, 1, 8, 8)`` in [0, 1]."""
    (x_train, y_train), (x_test, y_test) = load_digits(8)
    return (x_train, y_train.astype(np.float32)), (x_test, y_test.astype(np.float32))


def class_counts(labels, num_classes):
    """Samples per class, ignore labels left out."""
    kept = labels[labels != IGNORE].astype(np.int64)
    return np.bincount(kept, minlength=num_classes)
