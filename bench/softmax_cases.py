"""The softmax cross-entropy problem that every softmax bench times: shapes and inputs.

NumPy only, so that the PyTorch worker (bench/torch_softmax_ce.py), which must never
import MXNet, builds exactly the inputs the MXNet side builds from the same seed.
"""
import numpy as np

IGNORE = -1
IGNORED_FRACTION = 0.25
CASES = [  # (name, pred shape, class axis)
    ("(131072, 21)", (131072, 21), -1),
    ("(2, 128, 81)", (2, 128, 81), -1),
    ("(4, 21, 64, 64) axis=1", (4, 21, 64, 64), 1),
    ("(8, 21, 128, 128) axis=1", (8, 21, 128, 128), 1),
]


def make_inputs(shape, axis, seed=0):
    """``(pred float32, label float32 with IGNORE at ~25 % of positions, class_weight)``.

    Labels are float32 because that is what MXNet's losses take; the PyTorch worker
    casts them to int64.
    """
    rng = np.random.RandomState(seed)
    num_classes = shape[axis]
    label_shape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    label = rng.randint(0, num_classes, size=label_shape).astype(np.float32)
    label[rng.rand(*label_shape) < IGNORED_FRACTION] = IGNORE
    pred = rng.randn(*shape).astype(np.float32)
    class_weight = rng.uniform(0.5, 2.0, size=num_classes)
    return pred, label, class_weight


def calls_per_turn(shape):
    """Small calls take their turns 15 at a time, as a training loop makes them."""
    return 15 if np.prod(shape) < 1e5 else 1
