"""Detection data: the generated shapes set, VOC and .lst builders, transforms.

The shapes set is a generated, deliberately imbalanced detection set.

Each image is a noisy background with one to three non-overlapping filled shapes
in random colours; the class is the shape, never the colour. Train-split classes
are drawn with relative frequencies ``DEFAULT_FREQUENCIES`` (50:25:10:2 by
default, so "star" is rare); the test split draws classes uniformly, so that the
per-class AP of a rare class is measured on as many instances as that of a common
one.

The set is a pure function of ``(seed, sizes, frequencies)``: it is generated on
first use and cached as one ``.npz`` under ``root`` (``data/shapes`` by default,
gitignored); a cache whose recorded parameters differ is regenerated.

Items follow GluonCV's detection dataset convention, like ``VOCDetection``:
``(image, label)`` with ``image`` an ``mx.nd.NDArray`` (H, W, 3) uint8 RGB and
``label`` a float32 NumPy array (n, 5) of ``[xmin, ymin, xmax, ymax, class_id]``
in pixels.

:func:`build_datasets` returns the training and test splits of any of the three
sources; :func:`foreground_counts` counts training instances per class without
decoding images.
"""
import hashlib
import json
import os

import numpy as np
import mxnet as mx
from mxnet import gluon

from examples.common import atomic_write

SOURCES = ("shapes", "voc", "lst")

CLASSES = ("circle", "square", "triangle", "star")
DEFAULT_FREQUENCIES = (50, 25, 10, 2)


def _polygon(kind, cx, cy, r, angle):
    if kind == "square":
        k, rad = 4, r * 0.92
        offset = np.pi / 4
    elif kind == "triangle":
        k, rad = 3, r
        offset = -np.pi / 2
    else:
        raise ValueError(kind)
    t = offset + angle + 2 * np.pi * np.arange(k) / k
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


def _star(cx, cy, r, angle):
    t = -np.pi / 2 + angle + np.pi * np.arange(10) / 5
    rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


def _draw(image, kind, cx, cy, r, angle, color):
    """Draw one filled shape; returns its tight box [xmin, ymin, xmax, ymax]."""
    import cv2  # opencv-python is a declared dependency; imported lazily to keep import cheap

    if kind == "circle":
        cv2.circle(image, (int(round(cx)), int(round(cy))), int(round(r)), color, -1,
                   lineType=cv2.LINE_AA)
        box = [cx - r, cy - r, cx + r, cy + r]
    else:
        pts = _polygon(kind, cx, cy, r, angle) if kind != "star" else _star(cx, cy, r, angle)
        cv2.fillPoly(image, [np.round(pts).astype(np.int32)], color, lineType=cv2.LINE_AA)
        box = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
    h, w = image.shape[:2]
    return [max(0.0, box[0]), max(0.0, box[1]), min(w - 1.0, box[2]), min(h - 1.0, box[3])]


def generate(num_images, seed, frequencies, size=128, max_objects=3, min_radius=9, max_radius=26):
    """Return ``(images uint8 (N, size, size, 3), labels list of float32 (n, 5))``."""
    from gluoncv.utils import bbox_iou
    rng = np.random.RandomState(seed)
    probs = np.asarray(frequencies, dtype=np.float64)
    probs = probs / probs.sum()
    images = np.empty((num_images, size, size, 3), dtype=np.uint8)
    labels = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(num_images):
        # background: a random linear gradient plus pixel noise
        base = rng.uniform(40, 200, size=3)
        gx, gy = rng.uniform(-0.4, 0.4, size=2)
        bg = base[None, None, :] + (gx * xx + gy * yy)[:, :, None]
        bg = bg + rng.normal(0, 12, size=(size, size, 3))
        image = np.ascontiguousarray(np.clip(bg, 0, 255).astype(np.uint8))
        boxes = []
        for _ in range(rng.randint(1, max_objects + 1)):
            cls = int(rng.choice(len(probs), p=probs))
            for _attempt in range(20):
                r = rng.uniform(min_radius, max_radius)
                cx, cy = rng.uniform(r, size - r, size=2)
                cand = np.array([[cx - r, cy - r, cx + r, cy + r]])
                if not boxes or bbox_iou(cand, np.asarray(boxes)[:, :4]).max() < 0.05:
                    break
            else:
                continue
            # a colour far enough from the local background to be visible
            local = image[int(cy), int(cx)].astype(np.float64)
            color = rng.uniform(0, 255, size=3)
            if np.abs(color - local).sum() < 150:
                color = 255.0 - local
            box = _draw(image, CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * np.pi),
                        tuple(float(c) for c in color))
            boxes.append(box + [float(cls)])
        images[i] = image
        labels.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 5))
    return images, labels


def _cache_key(params):
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def load_or_generate(root, split, num_images, seed, frequencies, size):
    """Cached :func:`generate`; the cache file name encodes every parameter."""
    params = {"split": split, "num_images": int(num_images), "seed": int(seed),
              "frequencies": [float(f) for f in frequencies], "size": int(size), "version": 1}
    path = os.path.join(root, "shapes-%s-%s.npz" % (split, _cache_key(params)))
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as data:
            images, flat, offsets = data["images"], data["labels"], data["offsets"]
        labels = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        return images, labels, path
    images, labels = generate(num_images, seed, frequencies, size)
    offsets = np.cumsum([0] + [len(l) for l in labels])
    flat = np.concatenate(labels, axis=0) if labels else np.zeros((0, 5), np.float32)

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images, labels=flat, offsets=offsets,
                                params=json.dumps(params))
    atomic_write(path, write)
    return images, labels, path


class ShapesDetection(gluon.data.Dataset):
    """One split of the generated shapes set (see the module docstring).

    Parameters
    ----------
    split : 'train' or 'test'
    num_images : int
    seed : int
        Base seed; the test split uses a different stream derived from it.
    frequencies : sequence of float or None
        Relative class frequencies; default ``DEFAULT_FREQUENCIES`` for train and
        uniform for test.
    size : int
        Square image side in pixels.
    root : str
        Cache folder.
    """

    CLASSES = CLASSES

    def __init__(self, split="train", num_images=400, seed=0, frequencies=None, size=128,
                 root=os.path.join("data", "shapes")):
        if split not in ("train", "test"):
            raise ValueError("split must be 'train' or 'test', got %r" % (split,))
        if frequencies is None:
            frequencies = DEFAULT_FREQUENCIES if split == "train" else (1,) * len(CLASSES)
        if len(frequencies) != len(CLASSES):
            raise ValueError("frequencies needs %d entries, got %r" % (len(CLASSES), frequencies))
        stream = seed * 2 + (0 if split == "train" else 1)
        self._images, self._labels, self.path = load_or_generate(
            root, split, num_images, stream, frequencies, size)
        self.split = split

    @property
    def classes(self):
        return list(CLASSES)

    @property
    def num_class(self):
        return len(CLASSES)

    def __len__(self):
        return len(self._images)

    def __getitem__(self, idx):
        return mx.nd.array(self._images[idx], dtype=np.uint8), self._labels[idx].copy()

    def label_list(self):
        """All labels without decoding images (for class counts)."""
        return [l.copy() for l in self._labels]


def shapes_datasets(root, num_train, num_test, seed, frequencies=DEFAULT_FREQUENCIES, size=128):
    """``(train, test, classes)`` of the generated set; ``frequencies`` apply to train."""
    train = ShapesDetection("train", num_train, seed, frequencies, size, root)
    test = ShapesDetection("test", num_test, seed, None, size, root)
    return train, test, train.classes


def _voc_splits(text):
    """``"2007/trainval,2012/trainval"`` -> ``[(2007, 'trainval'), (2012, 'trainval')]``."""
    splits = []
    for item in text.split(","):
        year, _, split = item.strip().partition("/")
        splits.append((int(year), split or "trainval"))
    return splits


def voc_datasets(root, train_splits="2007/trainval", test_splits="2007/test"):
    """``(train, test, classes)``: GluonCV ``VOCDetection`` on ``root`` (holding VOC2007/).

    ``train_splits`` / ``test_splits`` are comma-separated ``YEAR/SPLIT`` lists.
    """
    from gluoncv.data import VOCDetection
    root = os.path.expanduser(root)
    train = VOCDetection(root=root, splits=_voc_splits(train_splits))
    test = VOCDetection(root=root, splits=_voc_splits(test_splits))
    return train, test, list(train.classes)


def lst_datasets(train_file, test_file=None, root=None, classes=None):
    """``(train, test or None, classes)``: GluonCV ``LstDetection`` from .lst files.

    Images are read under ``root`` (default: the training .lst file's folder).
    ``classes`` names the class ids; default ``class0 .. classK`` for the largest id K
    in the training labels.
    """
    from gluoncv.data import LstDetection
    root = root or os.path.dirname(os.path.abspath(train_file))
    train = LstDetection(train_file, root=root)
    test = LstDetection(test_file, root=root) if test_file else None
    if classes:
        classes = list(classes)
    else:
        top = max(int(ids.max()) for ids in class_ids(train) if ids.size)
        classes = ["class%d" % i for i in range(top + 1)]
    return train, test, classes


def class_ids(dataset):
    """Per image, the class ids of its boxes, without decoding images: the shapes set
    keeps its labels, GluonCV's datasets are read by ``gluon_losses.dataset_labels``."""
    if hasattr(dataset, "label_list"):
        return [np.asarray(l)[:, 4] for l in dataset.label_list() if len(l)]
    from gluon_losses.dataset_labels import detection_class_ids
    return detection_class_ids(dataset)


def foreground_counts(dataset, num_fg):
    """Instances of each foreground class in the training labels (-1: padding)."""
    from gluon_losses.class_weights import class_counts
    return class_counts([i for i in class_ids(dataset) if i.size], num_classes=num_fg,
                        ignore_label=-1)


def train_loader(dataset, net, batch_size, num_shards=1, shuffle=True, num_workers=0):
    """GluonCV's Faster R-CNN training pipeline: resize, random flip, RPN targets, and a
    batch of ``batch_size * num_shards`` images already cut into ``num_shards`` shards."""
    from gluoncv.data.batchify import FasterRCNNTrainBatchify
    from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultTrainTransform
    transform = FasterRCNNDefaultTrainTransform(net.short, net.max_size, net, ashape=net.ashape,
                                                multi_stage=getattr(net, "num_stages", 1) > 1)
    return gluon.data.DataLoader(
        dataset.transform(transform), batch_size=batch_size * num_shards, shuffle=shuffle,
        batchify_fn=FasterRCNNTrainBatchify(net, num_shards), last_batch="discard",
        num_workers=num_workers)
