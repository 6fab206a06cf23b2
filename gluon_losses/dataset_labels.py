"""Labels of GluonCV datasets, read from annotations and mask files; no image is decoded.

Used by :func:`gluon_losses.class_weights.for_detection` and
:func:`~gluon_losses.class_weights.for_segmentation`. GluonCV is imported here,
inside the functions, so the library itself needs only NumPy and MXNet.

Indexing a GluonCV dataset decodes its image, so labels are taken from where each
dataset keeps them:

- ``VOCDetection`` (and its subclasses): the preloaded label cache, else each
  annotation XML parsed by the dataset's own ``_load_label``;
- ``COCODetection``: the labels it built from the JSON annotations;
- ``LstDetection``: the labels it read from the ``.lst`` file;
- ``RecordFileDetection``: each record's header, unpacked without its image;
- ``VOCSegmentation``, ``ADE20KSegmentation``, ``CitySegmentation``,
  ``VOCAugSegmentation``: each mask file (a label image) through the dataset's own
  ``_mask_transform``; ``COCOSegmentation``: masks drawn from the annotations;
- ``MixupDetection`` and ``dataset.transform(...)`` wrappers: the dataset they wrap.
"""
import numpy as np
import mxnet as mx

from .mxnet_internals import transformed_dataset_base

__all__ = ["detection_class_ids", "segmentation_masks", "foreground_class_count",
           "segmentation_class_count"]

_DETECTION_SUPPORTED = ("VOCDetection, COCODetection, LstDetection, RecordFileDetection, "
                        "and MixupDetection or dataset.transform(...) around one of them")
_SEGMENTATION_SUPPORTED = ("VOCSegmentation, VOCAugSegmentation, ADE20KSegmentation, "
                           "CitySegmentation, COCOSegmentation, or any GluonCV "
                           "SegmentationDataset with a 'masks' or 'mask_paths' list of mask "
                           "files, and dataset.transform(...) around one of them")


def _unwrap(dataset):
    """The dataset that holds the annotations, under mixup and lazy-transform wrappers."""
    from gluoncv.data.mixup.detection import MixupDetection
    while True:
        if isinstance(dataset, MixupDetection):
            dataset = dataset._dataset
        elif transformed_dataset_base(dataset) is not None:
            dataset = transformed_dataset_base(dataset)
        else:
            return dataset


def _header_class_ids(raw, where):
    """Class ids of an ``ImageDetIter``-style label: header length, object width, objects."""
    raw = np.asarray(raw, dtype=np.float64).ravel()
    if raw.size < 2:
        raise ValueError("%s: detection label %r has no [header_length, object_width] header"
                         % (where, raw.tolist()))
    header, width = int(raw[0]), int(raw[1])
    objects = raw[header:]
    if width < 5 or header < 2 or objects.size % width:
        raise ValueError("%s: detection label with header length %d and object width %d "
                         "does not split into objects (%d values after the header)"
                         % (where, header, width, objects.size))
    return objects.reshape(-1, width)[:, 0]


def _box_class_ids(label):
    """Column 4 (the class id) of GluonCV's (N, >= 5) box label; (0,) when it has no box."""
    label = np.asarray(label, dtype=np.float64)
    if label.size == 0:
        return np.zeros(0)
    return label.reshape(-1, label.shape[-1])[:, 4]


def detection_class_ids(dataset):
    """Per image, the class ids (0-based foreground classes) of its ground-truth boxes.

    Returns a list of 1-D float arrays, one per image. Raises ``ValueError`` for a
    dataset whose labels cannot be read without decoding its images.
    """
    from gluoncv.data import COCODetection, LstDetection, RecordFileDetection, VOCDetection
    base = _unwrap(dataset)
    if isinstance(base, VOCDetection):
        cache = base._label_cache
        labels = cache if cache else [base._load_label(i) for i in range(len(base))]
        return [_box_class_ids(label) for label in labels]
    if isinstance(base, COCODetection):
        return [_box_class_ids(label) for label in base._labels]
    if isinstance(base, LstDetection):
        return [_header_class_ids(raw, "line %d" % (i + 1)) for i, raw in enumerate(base._labels)]
    if isinstance(base, RecordFileDetection):
        record = base._record
        ids = []
        for i, key in enumerate(record.keys):
            header, _ = mx.recordio.unpack(record.read_idx(key))  # leaves the image bytes
            ids.append(_header_class_ids(header.label, "record %d" % i))
        return ids
    raise ValueError("cannot read the box labels of a %s without decoding its images; "
                     "readable: %s" % (type(base).__name__, _DETECTION_SUPPORTED))


def foreground_class_count(dataset):
    """``len(dataset.classes)``, or None when the dataset does not name its classes."""
    classes = getattr(_unwrap(dataset), "classes", None)
    return None if classes is None else len(classes)


def _mask_sources(base):
    """A function giving mask ``i`` as a PIL image, and the number of masks."""
    from PIL import Image
    if hasattr(base, "coco") and hasattr(base, "ids") and hasattr(base, "_gen_seg_mask"):
        coco = base.coco

        def coco_mask(i):
            meta = coco.loadImgs(base.ids[i])[0]
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=base.ids[i]))
            return Image.fromarray(base._gen_seg_mask(annotations, meta["height"],
                                                      meta["width"]))
        return coco_mask, len(base.ids)
    paths = getattr(base, "masks", None)
    if paths is None:
        paths = getattr(base, "mask_paths", None)
    if not isinstance(paths, (list, tuple)) or not hasattr(base, "_mask_transform") or (
            paths and not isinstance(paths[0], str)):
        raise ValueError("cannot read the masks of a %s without decoding its images; "
                         "readable: %s" % (type(base).__name__, _SEGMENTATION_SUPPORTED))
    if not paths and len(base):
        raise ValueError("%s has %d images but no mask files (a 'test' split has no labels)"
                         % (type(base).__name__, len(base)))
    read = base._load_mat if hasattr(base, "_load_mat") else Image.open
    return (lambda i: read(paths[i])), len(paths)


def segmentation_masks(dataset):
    """Each mask of a GluonCV segmentation dataset as the dataset labels it.

    Returns an iterator of ``(name, labels)``: a label array per mask, after the
    dataset's own ``_mask_transform`` (GluonCV's VOC masks turn 255 into -1 there).
    Raises ``ValueError`` at once for a dataset whose masks it cannot read.
    """
    base = _unwrap(dataset)
    mask_at, count = _mask_sources(base)
    paths = getattr(base, "masks", None) or getattr(base, "mask_paths", None)

    def read(i):
        labels = base._mask_transform(mask_at(i))
        labels = labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else np.asarray(labels)
        return (paths[i] if paths else "mask %d" % i), labels
    return map(read, range(count))


def segmentation_class_count(dataset):
    """``dataset.num_class``, or None when the dataset does not give it."""
    base = _unwrap(dataset)
    count = getattr(base, "num_class", None)
    return count if isinstance(count, (int, np.integer)) else getattr(base, "NUM_CLASS", None)
