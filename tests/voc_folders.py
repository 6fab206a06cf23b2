"""Tiny Pascal VOC folders written on the fly, for tests that read them with GluonCV.

Detection: ``VOC2007`` layout (Annotations/*.xml, ImageSets/Main/<split>.txt,
JPEGImages/*.jpg). Segmentation: ``VOC2012`` layout (SegmentationClass/*.png palette
masks with 255 borders, ImageSets/Segmentation/<split>.txt, JPEGImages/*.jpg). The
writers return what they wrote, so tests count labels from their own data.
"""
import os

import numpy as np
from PIL import Image

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _write_jpeg(path, height, width, seed):
    pixels = np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_voc_detection(root, images, split="trainval", size=(48, 64)):
    """Write ``VOC2007`` with one image per entry of ``images``.

    ``images`` is a list of lists of ``(class_name, difficult)``; each object gets
    a valid box inside a ``size`` = (height, width) image. Returns the image ids.
    """
    base = os.path.join(root, "VOC2007")
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    height, width = size
    ids = []
    for index, objects in enumerate(images):
        image_id = "%06d" % index
        ids.append(image_id)
        _write_jpeg(os.path.join(base, "JPEGImages", image_id + ".jpg"), height, width, index)
        parts = ["<annotation><size><width>%d</width><height>%d</height><depth>3</depth>"
                 "</size>" % (width, height)]
        for k, (name, difficult) in enumerate(objects):
            xmin, ymin = 2 + k, 3 + k
            parts.append("<object><name>%s</name><difficult>%d</difficult><bndbox>"
                         "<xmin>%d</xmin><ymin>%d</ymin><xmax>%d</xmax><ymax>%d</ymax>"
                         "</bndbox></object>" % (name, difficult, xmin, ymin, xmin + 20,
                                                 ymin + 15))
        parts.append("</annotation>")
        with open(os.path.join(base, "Annotations", image_id + ".xml"), "w") as f:
            f.write("".join(parts))
    with open(os.path.join(base, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return ids


def voc_palette():
    """The 256-entry VOC colour map as a flat list, as VOC's PNG masks carry it."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def random_masks(count, num_class=21, size=(24, 32), seed=0):
    """``count`` uint8 masks with a few rectangles of random classes and 255 outlines."""
    rng = np.random.RandomState(seed)
    masks = []
    height, width = size
    for _ in range(count):
        mask = np.zeros(size, dtype=np.uint8)
        for _ in range(rng.randint(1, 4)):
            cls = rng.randint(1, num_class)
            y0, x0 = rng.randint(0, height - 6), rng.randint(0, width - 6)
            y1, x1 = y0 + rng.randint(4, 10), x0 + rng.randint(4, 12)
            mask[y0:y1, x0:x1] = 255  # the void outline VOC draws around objects
            mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = cls
        masks.append(mask)
    return masks


def counted_pixels(masks, num_class):
    """Pixels per class and Eigen & Fergus's denominators (the pixels of the images a
    class is in), from uint8 masks with 255 = void."""
    counts = np.zeros(num_class)
    image_pixels = np.zeros(num_class)
    for mask in masks:
        labelled = mask[mask != 255]
        present = np.bincount(labelled, minlength=num_class)
        counts += present
        image_pixels += np.where(present > 0, labelled.size, 0)
    return counts, image_pixels


def write_voc_segmentation(root, masks, split="trainval"):
    """Write ``VOC2012`` with a palette PNG per mask (uint8 arrays, 255 = void).

    GluonCV's ``VOCSegmentation(split='train')`` reads ``trainval.txt``,
    ``split='val'`` reads ``val.txt``. Returns the image ids.
    """
    base = os.path.join(root, "VOC2012")
    for sub in ("SegmentationClass", os.path.join("ImageSets", "Segmentation"), "JPEGImages"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    palette = voc_palette()
    ids = []
    for index, mask in enumerate(masks):
        image_id = "2012_%06d" % index
        ids.append(image_id)
        _write_jpeg(os.path.join(base, "JPEGImages", image_id + ".jpg"), mask.shape[0],
                    mask.shape[1], index)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(os.path.join(base, "SegmentationClass", image_id + ".png"))
    with open(os.path.join(base, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return ids


class ImageDecoded(AssertionError):
    """Raised by the patched decoders: something tried to decode an image."""


def refuse_image_decoding(monkeypatch):
    """Make every image decoder GluonCV and MXNet reach raise :class:`ImageDecoded`.

    Label files stay readable: PIL may open PNG masks (label images), never a JPEG.
    """
    import cv2
    import mxnet as mx

    def refuse(*args, **kwargs):
        raise ImageDecoded("an image was decoded")

    for module, name in ((mx.image, "imread"), (mx.image, "imdecode"),
                         (mx.recordio, "unpack_img"), (cv2, "imread"), (cv2, "imdecode")):
        monkeypatch.setattr(module, name, refuse)
    open_image = Image.open

    def open_masks_only(fp, *args, **kwargs):
        if not str(fp).lower().endswith(".png"):
            raise ImageDecoded("an image was opened: %s" % (fp,))
        return open_image(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_masks_only)
