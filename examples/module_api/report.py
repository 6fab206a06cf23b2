"""Evaluation of the two runs: accuracies from the probabilities, center-loss statistics."""
import numpy as np


def classification_metrics(probabilities, labels, num_classes, ignore_label):
    """Accuracy, balanced accuracy and per-class recall over the non-ignored labels.

    ``probabilities`` is ``(N, C)`` or ``(B, C, R)`` and ``labels`` ``(N,)`` or
    ``(B, R)``.
    """
    predicted = probabilities.argmax(axis=1).ravel()
    labels = labels.ravel()
    kept = labels != ignore_label
    predicted, labels = predicted[kept], labels[kept].astype(np.int64)
    recall = [float((predicted[labels == c] == c).mean()) if (labels == c).any() else None
              for c in range(num_classes)]
    present = [r for r in recall if r is not None]
    return {"accuracy": float((predicted == labels).mean()),
            "balanced_accuracy": float(np.mean(present)),
            "recall_per_class": recall,
            "rows_sum_to_one": bool(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5))}


def center_metrics(features, labels, state):
    """The learned centers and how tightly test features sit around them.

    ``state`` is the ``(K, D, 2)`` center-loss state: centers in ``[..., 0]``, the
    number of samples that updated them in ``[..., 1]``.
    """
    centers, counts = state[..., 0], state[:, 0, 1]
    labels = labels.astype(np.int64)
    distances = np.linalg.norm(features - centers[labels], axis=1)
    nearest = np.linalg.norm(features[:, None] - centers[None], axis=2).argmin(axis=1)
    return {"centers": centers.tolist(), "center_update_counts": counts.tolist(),
            "mean_distance_to_center": float(distances.mean()),
            "nearest_center_accuracy": float((nearest == labels).mean())}
