"""Test-split metrics from the confusion matrix: per-class IoU, mIoU, pixel accuracy.

The matrix counts labelled pixels only (void -1 skipped), rows = ground truth, columns
= prediction. IoU of class c is ``M[c, c] / (row_c + col_c - M[c, c])``, the same
quantity as GluonCV's ``SegmentationMetric`` (the test suite compares the two).
"""
import numpy as np
import mxnet as mx


def confusion_matrix(labels, predicted, num_class):
    """``(C, C)`` int64 counts of (label, prediction) pairs over pixels with label >= 0."""
    labels = np.asarray(labels).ravel()
    predicted = np.asarray(predicted).ravel()
    kept = labels >= 0
    pairs = labels[kept].astype(np.int64) * num_class + predicted[kept].astype(np.int64)
    return np.bincount(pairs, minlength=num_class * num_class).reshape(num_class, num_class)


def scores(matrix):
    """``{'iou': [C], 'miou', 'pixel_accuracy'}`` from a confusion matrix.

    A class with an empty union (absent from labels and predictions) has IoU NaN and
    is left out of the mean.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - hits
    iou = np.where(union > 0, hits / np.where(union > 0, union, 1.0), np.nan)
    return {"iou": [float(v) for v in iou], "miou": float(np.nanmean(iou)),
            "pixel_accuracy": float(hits.sum() / max(matrix.sum(), 1.0))}


def predict(net, images, ctx, batch_size=64):
    """Argmax of the main head over normalised ``(N, 3, H, W)`` images, ``(N, H, W)`` int."""
    predicted = []
    for start in range(0, len(images), batch_size):
        outputs = net(mx.nd.array(images[start:start + batch_size], ctx=ctx))
        predicted.append(outputs[0].argmax(axis=1).asnumpy().astype(np.int64))
    return np.concatenate(predicted)


def confusion_matrix_of(net, images, labels, num_class, ctx, batch_size=64):
    """The test confusion matrix of ``net`` (main head) on ``images`` / ``labels``."""
    return confusion_matrix(labels, predict(net, images, ctx, batch_size), num_class)
