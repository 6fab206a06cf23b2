r"""Per-class weights computed from label statistics.

Every weighting takes a vector of per-class counts :math:`n_c` (``counts``) or,
instead, ``labels``: one label array or an iterable of label arrays/batches
(NumPy or NDArray, any shape), counted in one streaming pass with the ignore label
skipped. The result is a float32 NumPy vector of length :math:`C`, ready for
``WeightedSoftmaxCELoss(class_weight=...)``.

Classes that never occur
    A class with :math:`n_c = 0` has no defined frequency. It gets the largest
    weight given to any class that does occur (it is at least as rare as the rarest
    class seen), so the vector stays finite and such a class, if it shows up later,
    is treated as the rarest one. Labels with no counted class at all raise
    ``ValueError``.
"""
import numbers

import numpy as np
import mxnet as mx

from .checks import check_choice, check_float, check_ignore_label, check_int, check_labels

__all__ = ["ClassCounter", "class_counts", "inverse_frequency", "median_frequency",
           "effective_number", "from_counts", "for_detection", "for_segmentation"]


class ClassCounter:
    """Streaming per-class counts over label arrays, skipping ``ignore_label``.

    Parameters
    ----------
    num_classes : int
        :math:`C`; labels must lie in ``[0, C)`` or equal ``ignore_label``.
    ignore_label : int or None, default -1
        Label value that is not counted (-1 for unsampled proposals, 255 for
        unlabelled pixels).

    Attributes
    ----------
    counts : ndarray, shape (C,)
        Number of labels of each class seen so far.
    image_pixels : ndarray, shape (C,)
        For :meth:`update` with ``per_image=True``: the total number of counted
        labels in the images in which class :math:`c` appears (the denominator of
        Eigen & Fergus's class frequency).
    """

    def __init__(self, num_classes, ignore_label=-1):
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.ignore_label = check_ignore_label(ignore_label)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self.image_pixels = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, labels, per_image=False):
        """Count one label array. With ``per_image=True`` its first axis indexes images."""
        values = labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else np.asarray(labels)
        check_labels(values, self.num_classes, self.ignore_label, name="labels")
        images = values.reshape(values.shape[0], -1) if per_image else values.reshape(1, -1)
        for image in images:
            kept = image if self.ignore_label is None else image[image != self.ignore_label]
            image_counts = np.bincount(kept.astype(np.int64), minlength=self.num_classes)
            self.counts += image_counts
            self.image_pixels += np.where(image_counts > 0, kept.size, 0)
        return self


def class_counts(labels, num_classes, ignore_label=-1):
    """Per-class counts of one label array or an iterable of label arrays/batches.

    Returns
    -------
    ndarray, shape (C,), int64
    """
    counter = ClassCounter(num_classes, ignore_label)
    for batch in _as_batches(labels):
        counter.update(batch)
    return counter.counts


def _as_batches(labels):
    if isinstance(labels, (np.ndarray, mx.nd.NDArray, numbers.Number)):
        return [labels]
    if isinstance(labels, (list, tuple)) and labels and isinstance(labels[0], numbers.Number):
        return [np.asarray(labels)]
    return labels


def _resolve_counts(counts, labels, num_classes, ignore_label):
    if (counts is None) == (labels is None):
        raise ValueError("pass exactly one of counts or labels, got counts=%r and labels=%r"
                         % (type(counts).__name__ if counts is not None else None,
                            type(labels).__name__ if labels is not None else None))
    if labels is not None:
        if num_classes is None:
            raise ValueError("num_classes is required with labels, got None")
        return class_counts(labels, num_classes, ignore_label).astype(np.float64)
    if isinstance(counts, mx.nd.NDArray):
        counts = counts.asnumpy()
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("counts must be a non-empty 1-D vector, got shape %s" % (counts.shape,))
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("counts must be finite and >= 0, got %r" % (counts.tolist(),))
    return counts


def _fill_absent(weights, present):
    """Give classes that never occur the largest weight of a class that does."""
    if not np.any(present):
        raise ValueError("no class occurs in the counts (all zero), so no weight is defined")
    return np.where(present, weights, np.max(weights[present])).astype(np.float32)


def inverse_frequency(counts=None, labels=None, num_classes=None, ignore_label=-1):
    r"""Inverse class frequency, scikit-learn's ``class_weight='balanced'``.

    .. math:: w_c = \frac{n}{C\, n_c}, \qquad n = \sum_c n_c

    A perfectly balanced set gets all ones; the counted mean of the weights,
    :math:`\sum_c n_c w_c / n`, is 1.
    """
    counts = _resolve_counts(counts, labels, num_classes, ignore_label)
    present = counts > 0
    weights = counts.sum() / (counts.size * np.where(present, counts, 1.0))
    return _fill_absent(weights, present)


def median_frequency(counts=None, labels=None, num_classes=None, ignore_label=-1,
                     image_pixels=None):
    r"""Median frequency balancing (Eigen & Fergus, ICCV 2015).

    .. math:: w_c = \frac{\operatorname{median}_k f_k}{f_c}

    where the median runs over the classes that occur. With ``image_pixels`` (from
    :class:`ClassCounter` with ``per_image=True``), :math:`f_c = n_c /` the number
    of pixels in the images where :math:`c` is present, as in the paper; without it,
    :math:`f_c = n_c / n`.
    """
    counts = _resolve_counts(counts, labels, num_classes, ignore_label)
    present = counts > 0
    if image_pixels is None:
        denominator = np.full_like(counts, max(counts.sum(), 1.0))
    else:
        denominator = np.asarray(image_pixels, dtype=np.float64)
        if denominator.shape != counts.shape:
            raise ValueError("image_pixels has shape %s but counts has shape %s"
                             % (denominator.shape, counts.shape))
    frequency = np.where(present, counts / np.where(present, denominator, 1.0), 1.0)
    if not np.any(present):
        return _fill_absent(frequency, present)
    weights = np.median(frequency[present]) / frequency
    return _fill_absent(weights, present)


def effective_number(counts=None, beta=0.999, labels=None, num_classes=None, ignore_label=-1):
    r"""Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    .. math:: E_c = \frac{1 - \beta^{n_c}}{1 - \beta}, \qquad
              w_c = \frac{C\, /E_c}{\sum_k 1/E_k}

    so the weights sum to :math:`C`. ``beta=0`` gives equal weights and
    :math:`\beta \to 1` approaches inverse frequency. ``beta`` must lie in [0, 1).
    """
    beta = check_float("beta", beta, low=0.0, high=1.0, high_open=True)
    counts = _resolve_counts(counts, labels, num_classes, ignore_label)
    present = counts > 0
    # -expm1(n log beta) is 1 - beta^n without cancellation when beta is close to 1.
    effective = -np.expm1(np.where(present, counts, 1.0) * np.log(beta)) / (1.0 - beta) \
        if beta > 0 else np.ones_like(counts)
    weights = _fill_absent(1.0 / effective, present).astype(np.float64)
    return (weights * counts.size / weights.sum()).astype(np.float32)


METHODS = ("none", "inverse", "median", "effective")
DETECTION_METHODS = ("effective", "inverse", "median", "none")
SEGMENTATION_METHODS = ("median", "inverse", "effective", "none")


def from_counts(method, counts, beta=0.999, image_pixels=None):
    """The estimator named ``method`` applied to ``counts``: ``'inverse'``
    (:func:`inverse_frequency`), ``'median'`` (:func:`median_frequency`, with
    ``image_pixels`` when given), ``'effective'`` (:func:`effective_number` with
    ``beta``) or ``'none'`` (all ones). A float32 vector of length C."""
    method = check_choice("method", method, METHODS)
    if method == "none":
        return np.ones(np.size(counts), dtype=np.float32)
    if method == "inverse":
        return inverse_frequency(counts)
    if method == "median":
        return median_frequency(counts, image_pixels=image_pixels)
    return effective_number(counts, beta=beta)


def _class_count(name, given, from_dataset):
    if given is not None:
        return check_int(name, given, minimum=1)
    if from_dataset is None:
        raise ValueError("the dataset does not name its classes: pass %s=, got None" % name)
    return from_dataset


def for_detection(dataset, method="effective", beta=0.99, background_weight=1.0,
                  num_classes=None):
    r"""Class weights for a Faster R-CNN classification head, from a GluonCV detection dataset.

    GluonCV's RCNN targets put background at class 0 and the dataset's class
    :math:`c` at :math:`c + 1`, so the vector is

    .. math:: w = (w_\text{background},\ w_0,\ \dots,\ w_{K-1})

    with :math:`w_c` from ``method`` applied to the number of ground-truth boxes of
    each of the :math:`K` foreground classes (every box of the labels, VOC's
    ``difficult`` ones included, as GluonCV's target generator sees them): ``'effective'`` (:func:`effective_number`
    with ``beta``), ``'inverse'`` (:func:`inverse_frequency`), ``'median'``
    (:func:`median_frequency`) or ``'none'`` (all ones). Pass it as
    ``WeightedSoftmaxCELoss(class_weight=...)`` for ``cls_pred`` of shape
    ``(B, N, K + 1)``.

    Boxes are counted from the annotations, without decoding any image:
    ``VOCDetection``, ``COCODetection``, ``LstDetection``, ``RecordFileDetection``,
    and ``MixupDetection`` or ``dataset.transform(...)`` around one of them (a mixup
    set is counted on the dataset it mixes, whose class shares it keeps).

    Parameters
    ----------
    dataset : GluonCV detection dataset
    method : {'effective', 'inverse', 'median', 'none'}, default 'effective'
    beta : float in [0, 1), default 0.99
        For ``'effective'``.
    background_weight : float >= 0, default 1.0
        :math:`w_\text{background}`.
    num_classes : int or None
        :math:`K`; None reads ``len(dataset.classes)`` (``LstDetection`` and
        ``RecordFileDetection`` have no class list and need it).

    Returns
    -------
    ndarray, shape (K + 1,), float32

    Raises ``ValueError`` for a dataset it cannot read without decoding images, a box
    class outside ``[0, K)``, or a set with no box.
    """
    from . import dataset_labels
    method = check_choice("method", method, DETECTION_METHODS)
    beta = check_float("beta", beta, low=0.0, high=1.0, high_open=True)
    background_weight = check_float("background_weight", background_weight, low=0.0)
    ids = dataset_labels.detection_class_ids(dataset)
    num_classes = _class_count("num_classes", num_classes,
                               dataset_labels.foreground_class_count(dataset))
    counter = ClassCounter(num_classes, ignore_label=None)
    for image, image_ids in enumerate(ids):
        if image_ids.size:
            try:
                counter.update(image_ids)
            except ValueError as error:
                raise ValueError("image %d of the dataset: %s" % (image, error)) from None
    foreground = from_counts(method, counter.counts.astype(np.float64), beta)
    return np.concatenate([[background_weight], foreground]).astype(np.float32)


def for_segmentation(dataset, method="median", beta=0.9999, num_class=None):
    r"""Class weights for a segmentation loss, from a GluonCV segmentation dataset's masks.

    Pixels are counted from the mask files (label images, read as the dataset reads
    them, through its ``_mask_transform``), never decoding an RGB image. Void pixels,
    -1 (GluonCV's datasets turn the 255 of the files into -1) and 255, are skipped.
    ``method``:

    - ``'median'``: Eigen & Fergus's median frequency balancing,
      :math:`w_c = \operatorname{median}_k f_k / f_c` with :math:`f_c` = pixels of
      class :math:`c` over the labelled pixels of the images that contain :math:`c`
      (:func:`median_frequency` with ``image_pixels``);
    - ``'inverse'``: :func:`inverse_frequency` of the pixel counts;
    - ``'effective'``: :func:`effective_number` of the pixel counts with ``beta``.
      Pixel counts are large: a ``beta`` below :math:`1 - 1/n_c` for every class gives
      nearly equal weights, hence the default 0.9999;
    - ``'none'``: all ones.

    Readable: ``VOCSegmentation``, ``VOCAugSegmentation``, ``ADE20KSegmentation``,
    ``CitySegmentation``, ``COCOSegmentation``, any GluonCV ``SegmentationDataset``
    with a ``masks`` or ``mask_paths`` list, and ``dataset.transform(...)`` around one.

    Parameters
    ----------
    dataset : GluonCV segmentation dataset
    method : {'median', 'inverse', 'effective', 'none'}, default 'median'
    beta : float in [0, 1), default 0.9999
        For ``'effective'``.
    num_class : int or None
        :math:`C`; None reads ``dataset.num_class``.

    Returns
    -------
    ndarray, shape (C,), float32

    Raises ``ValueError`` for a dataset it cannot read without decoding images, a mask
    value outside ``[0, C)`` that is not void, or masks with no labelled pixel.
    """
    from . import dataset_labels
    method = check_choice("method", method, SEGMENTATION_METHODS)
    beta = check_float("beta", beta, low=0.0, high=1.0, high_open=True)
    masks = dataset_labels.segmentation_masks(dataset)
    num_class = _class_count("num_class", num_class,
                             dataset_labels.segmentation_class_count(dataset))
    counter = ClassCounter(num_class, ignore_label=None)
    for name, labels in masks:
        void = labels == -1
        if num_class <= 255:
            void |= labels == 255
        try:
            counter.update(labels[~void].reshape(1, -1), per_image=True)
        except ValueError as error:
            raise ValueError("%s: %s" % (name, error)) from None
    return from_counts(method, counter.counts.astype(np.float64), beta,
                                image_pixels=counter.image_pixels)
