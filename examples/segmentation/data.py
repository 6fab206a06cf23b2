"""A generated, strongly imbalanced segmentation set in the Pascal VOC2012 layout.

Each image is a noisy, shaded background with a few filled shapes on it. The classes
differ by shape, size, colour and how often they appear; the rare class ("speck") is a
small blob whose colour overlaps the common "disc" class, so colour alone does not
separate them, and it covers well under 2% of the labelled pixels. Masks are palette
PNGs with the VOC colour map and a band of void (255) pixels around every object, as in
VOC. Everything is a function of the seed, so a folder is generated once and reused.

The folder is read back with GluonCV's own ``VOCSegmentation``; note two of its habits:

- ``split='train'`` reads ``ImageSets/Segmentation/trainval.txt``; the generator writes
  the training ids there (and into ``train.txt``), so no held-out image is trained on;
- its mask transform turns 255 into -1, so the loss and the metric ignore -1.
"""
import json
import os
import shutil
import tempfile

import numpy as np

CLASSES = ("background", "square", "disc", "bar", "speck")
NUM_CLASS = len(CLASSES)
VOID = 255
# The held-out test split is VOC's val.txt (VOCSegmentation(split='val')).
SPLITS = {"train": "train", "test": "val"}

# Per foreground class: probability that an image holds one, object radius range in
# pixels at 64x64 (scaled with the image side), base colour (RGB).
SHAPES = {
    "square": dict(prob=0.85, radius=(9, 15), color=(60, 110, 200)),
    "disc": dict(prob=0.75, radius=(6, 11), color=(200, 70, 60)),
    "bar": dict(prob=0.45, radius=(7, 12), color=(80, 170, 80)),
    "speck": dict(prob=0.5, radius=(3, 4.5), color=(215, 85, 70)),
}


def _dilate(mask, width):
    """Binary dilation by a (2 width + 1)^2 square, without SciPy."""
    out = mask.copy()
    height, wide = mask.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            shifted = np.zeros_like(mask)
            shifted[max(dy, 0):height + min(dy, 0), max(dx, 0):wide + min(dx, 0)] = \
                mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):wide + min(-dx, 0)]
            out |= shifted
    return out


def _shape_mask(kind, size, cy, cx, radius, rng):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "square":
        angle = rng.uniform(0, np.pi / 2)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        return (np.abs(u) <= radius * 0.8) & (np.abs(v) <= radius * 0.8)
    if kind == "bar":
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        return (np.abs(u) <= radius * 1.3) & (np.abs(v) <= max(1.5, radius * 0.3))
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2      # disc and speck


def make_sample(rng, size=64, void_width=1):
    """One ``(image uint8 (H, W, 3), mask uint8 (H, W))`` pair drawn from ``rng``."""
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    base = rng.uniform(90, 150, size=3)
    tilt = rng.uniform(-40, 40, size=(2, 3))
    image = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    mask = np.zeros((size, size), dtype=np.uint8)
    scale = size / 64.0
    for label, kind in enumerate(CLASSES[1:], start=1):
        spec = SHAPES[kind]
        if rng.uniform() >= spec["prob"]:
            continue
        low, high = spec["radius"]
        radius = rng.uniform(low, high) * scale
        cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
        inside = _shape_mask(kind, size, cy, cx, radius, rng)
        color = np.asarray(spec["color"]) + rng.uniform(-35, 35, size=3)
        image[inside] = color
        # VOC marks object outlines void; a later object paints over earlier ones.
        border = _dilate(inside, void_width) & ~inside
        mask[inside] = label
        mask[border] = VOID
    image += rng.normal(0, 18, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def dataset_name(num_train, num_test, size, seed):
    return "shapes-%dx%d-train%d-test%d-seed%d" % (size, size, num_train, num_test, seed)


def generate(root, num_train=320, num_test=160, size=64, seed=0, void_width=1):
    """Write the set under ``root/VOC2012`` unless it is already there; returns ``root``.

    Written into a temporary folder and renamed into place, so an interrupted run never
    leaves a half-written set that a later run would take as complete.
    """
    from PIL import Image
    from gluoncv.utils.viz import get_color_pallete
    spec = dict(num_train=num_train, num_test=num_test, size=size, seed=seed,
                void_width=void_width, classes=list(CLASSES))
    manifest = os.path.join(root, "VOC2012", "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as handle:
            if json.load(handle) == spec:
                return root
        raise ValueError("root %r holds a different generated set (%s); choose another folder"
                         % (root, manifest))
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-VOC2012-")
    try:
        for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
            os.makedirs(os.path.join(tmp, sub))
        ids = {}
        for split_index, (split, count) in enumerate((("train", num_train), ("test", num_test))):
            ids[split] = ["%s_%05d" % (split, i) for i in range(count)]
            for i, name in enumerate(ids[split]):
                image, mask = make_sample(np.random.RandomState([seed, split_index, i]),
                                          size, void_width)
                Image.fromarray(image).save(os.path.join(tmp, "JPEGImages", name + ".jpg"),
                                            quality=95)
                # a palette PNG with the VOC colour map, as VOC ships its masks
                get_color_pallete(mask, "pascal_voc").save(
                    os.path.join(tmp, "SegmentationClass", name + ".png"))
        lists = {"train.txt": ids["train"], "trainval.txt": ids["train"], "val.txt": ids["test"]}
        for fname, names in lists.items():
            with open(os.path.join(tmp, "ImageSets", "Segmentation", fname), "w") as handle:
                handle.write("".join(name + "\n" for name in names))
        with open(os.path.join(tmp, "manifest.json"), "w") as handle:
            json.dump(spec, handle, indent=2)
        os.replace(tmp, os.path.join(root, "VOC2012"))
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return root


def voc_dataset(root, split):
    """GluonCV's ``VOCSegmentation`` over the generated ``split`` ('train' or 'test').

    ``mode='testval'`` keeps images at their size (no random crops), so every epoch
    sees the same pixels and a resumed run repeats an uninterrupted one exactly.
    """
    from gluoncv.data import VOCSegmentation
    return VOCSegmentation(root=root, split=SPLITS[split], mode="testval")


def load_arrays(dataset):
    """Decode every image of a GluonCV segmentation dataset into NumPy arrays.

    Returns ``images`` uint8 ``(N, H, W, 3)`` and ``labels`` int32 ``(N, H, W)`` with
    void as -1 (GluonCV's mask transform).
    """
    images, labels = [], []
    for index in range(len(dataset)):
        image, mask = dataset[index]
        images.append(image.asnumpy())
        labels.append(mask.asnumpy())
    return np.stack(images).astype(np.uint8), np.stack(labels).astype(np.int32)


def pixel_shares(labels, num_class=NUM_CLASS):
    """Share of the labelled (non-void) pixels held by each class."""
    kept = labels[labels >= 0]
    return np.bincount(kept.ravel(), minlength=num_class) / float(kept.size)
