"""Class weights against scikit-learn and the papers' formulas."""
import numpy as np
import pytest
import mxnet as mx

from gluon_losses import class_weights as cw
from voc_folders import (VOC_CLASSES, ImageDecoded, counted_pixels, random_masks,
                         refuse_image_decoding, write_voc_detection, write_voc_segmentation)


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


# ---- GluonCV datasets: for_detection / for_segmentation ------------------------------

DETECTION_IMAGES = [
    [("bottle", 0), ("person", 0), ("person", 1)],
    [("person", 0), ("person", 0), ("dog", 0)],
    [],
    [("person", 0), ("car", 0), ("car", 0), ("person", 0)],
    [("dog", 0), ("person", 0)],
]


def _counted_boxes(images, classes):
    counts = np.zeros(len(classes))
    for objects in images:
        for name, _ in objects:
            counts[classes.index(name)] += 1
    return counts


ESTIMATORS = {
    "inverse": lambda counts, beta, pixels=None: cw.inverse_frequency(counts),
    "median": lambda counts, beta, pixels=None: cw.median_frequency(counts, image_pixels=pixels),
    "effective": lambda counts, beta, pixels=None: cw.effective_number(counts, beta=beta),
    "none": lambda counts, beta, pixels=None: np.ones(len(counts), np.float32),
}


@pytest.fixture
def voc_detection(tmp_path, monkeypatch):
    from gluoncv.data import VOCDetection
    write_voc_detection(str(tmp_path), DETECTION_IMAGES)
    dataset = VOCDetection(root=str(tmp_path), splits=[(2007, "trainval")])
    refuse_image_decoding(monkeypatch)
    with pytest.raises(ImageDecoded):
        dataset[0]  # the patch does catch GluonCV's own image reading
    return dataset


@pytest.mark.parametrize("method", ["effective", "inverse", "median", "none"])
def test_for_detection_is_background_then_estimator_of_box_counts(voc_detection, method):
    counts = _counted_boxes(DETECTION_IMAGES, list(VOC_CLASSES))
    weights = cw.for_detection(voc_detection, method=method, beta=0.9, background_weight=0.5)
    expected = np.concatenate([[0.5], ESTIMATORS[method](counts, 0.9)])
    assert weights.dtype == np.float32 and weights.shape == (21,)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_for_detection_aligns_with_rcnn_targets(voc_detection):
    # RCNN target c + 1 is the dataset's class c; bottle (VOC class 4) is the rarest
    # class present, person (14) the most common.
    weights = cw.for_detection(voc_detection, method="inverse")
    bottle, person = VOC_CLASSES.index("bottle"), VOC_CLASSES.index("person")
    counts = _counted_boxes(DETECTION_IMAGES, list(VOC_CLASSES))
    assert weights[0] == 1.0
    assert weights[bottle + 1] == pytest.approx(counts.sum() / (20 * 1))
    assert weights[person + 1] == pytest.approx(counts.sum() / (20 * 7))


def test_for_detection_reads_without_label_cache_and_through_wrappers(tmp_path, monkeypatch):
    from gluoncv.data import VOCDetection
    from gluoncv.data.mixup.detection import MixupDetection
    write_voc_detection(str(tmp_path), DETECTION_IMAGES)
    lazy = VOCDetection(root=str(tmp_path), splits=[(2007, "trainval")], preload_label=False)
    refuse_image_decoding(monkeypatch)
    expected = np.concatenate([[1.0], cw.effective_number(
        _counted_boxes(DETECTION_IMAGES, list(VOC_CLASSES)), beta=0.99)])
    for dataset in (lazy, MixupDetection(lazy, np.random.uniform, 0.5, 0.5),
                    lazy.transform(lambda img, label: (img, label)),
                    MixupDetection(lazy.transform(lambda img, label: (img, label)))):
        np.testing.assert_allclose(cw.for_detection(dataset), expected, rtol=1e-6)


def _header_label(objects):
    """ImageDetIter label: header [2, 5], then [class, xmin, ymin, xmax, ymax] per object."""
    label = [2, 5]
    for cls in objects:
        label += [cls, 0.1, 0.2, 0.5, 0.6]
    return label


LST_OBJECTS = [[0, 2, 2], [1], [2, 2, 0, 2], []]


def test_for_detection_lst_file(tmp_path, monkeypatch):
    from gluoncv.data import LstDetection
    lines = ["%d\t%s\timg%d.jpg" % (i, "\t".join("%g" % v for v in _header_label(objects)), i)
             for i, objects in enumerate(LST_OBJECTS)]
    (tmp_path / "train.lst").write_text("\n".join(lines) + "\n")
    dataset = LstDetection(str(tmp_path / "train.lst"), root=str(tmp_path))
    refuse_image_decoding(monkeypatch)
    counts = np.bincount(np.concatenate([o for o in LST_OBJECTS if o]), minlength=4)
    np.testing.assert_allclose(cw.for_detection(dataset, method="median", num_classes=4),
                               np.concatenate([[1.0], cw.median_frequency(counts)]), rtol=1e-6)
    with pytest.raises(ValueError, match="does not name its classes: pass num_classes="):
        cw.for_detection(dataset)
    with pytest.raises(ValueError, match=r"image 0 of the dataset: labels contains 2.0, which "
                                         r"is outside \[0, 2\)"):
        cw.for_detection(dataset, num_classes=2)


def test_for_detection_record_file_reads_headers_only(tmp_path, monkeypatch):
    import io
    from PIL import Image
    from gluoncv.data import RecordFileDetection
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, format="JPEG")
    record = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"),
                                           str(tmp_path / "train.rec"), "w")
    for i, objects in enumerate(LST_OBJECTS):
        header = mx.recordio.IRHeader(0, np.array(_header_label(objects), np.float32), i, 0)
        record.write_idx(i, mx.recordio.pack(header, jpeg.getvalue()))
    record.close()
    dataset = RecordFileDetection(str(tmp_path / "train.rec"))
    refuse_image_decoding(monkeypatch)
    with pytest.raises(ImageDecoded):
        dataset[0]
    counts = np.bincount(np.concatenate([o for o in LST_OBJECTS if o]), minlength=4)
    np.testing.assert_allclose(
        cw.for_detection(dataset, method="inverse", num_classes=4, background_weight=2.0),
        np.concatenate([[2.0], cw.inverse_frequency(counts)]), rtol=1e-6)


def test_for_detection_coco_labels():
    # pycocotools is not installed here, so the dataset is built without its JSON
    # loader; the labels are what COCODetection._load_jsons stores: (N, 5) boxes.
    from gluoncv.data import COCODetection
    dataset = COCODetection.__new__(COCODetection)
    dataset._labels = [np.array([[0, 0, 5, 5, 3], [1, 1, 4, 4, 79]], np.float32),
                       np.array([[0, 0, 5, 5, 3]], np.float32)]
    counts = np.zeros(80)
    counts[3], counts[79] = 2, 1
    np.testing.assert_allclose(cw.for_detection(dataset, method="inverse"),
                               np.concatenate([[1.0], cw.inverse_frequency(counts)]), rtol=1e-6)


def test_for_detection_unreadable_dataset_says_so():
    dataset = mx.gluon.data.SimpleDataset([(np.zeros((4, 4, 3)), np.zeros((1, 6)))])
    with pytest.raises(ValueError, match="cannot read the box labels of a SimpleDataset without "
                                         "decoding its images; readable: VOCDetection"):
        cw.for_detection(dataset)
    with pytest.raises(ValueError, match="method must be one of"):
        cw.for_detection(dataset, method="balanced")


SEGMENTATION_MASKS = random_masks(6, num_class=21, seed=3)


@pytest.fixture
def voc_segmentation(tmp_path, monkeypatch):
    from gluoncv.data import VOCSegmentation
    write_voc_segmentation(str(tmp_path), SEGMENTATION_MASKS)
    dataset = VOCSegmentation(root=str(tmp_path), split="train")
    refuse_image_decoding(monkeypatch)
    with pytest.raises(ImageDecoded):
        dataset[0]
    return dataset


@pytest.mark.parametrize("method", ["median", "inverse", "effective", "none"])
def test_for_segmentation_is_estimator_of_mask_counts(voc_segmentation, method):
    counts, image_pixels = counted_pixels(SEGMENTATION_MASKS, 21)
    assert 0 < np.count_nonzero(counts) < 21  # absent classes are exercised too
    weights = cw.for_segmentation(voc_segmentation, method=method, beta=0.999)
    assert weights.dtype == np.float32 and weights.shape == (21,)
    np.testing.assert_allclose(weights, ESTIMATORS[method](counts, 0.999, image_pixels),
                               rtol=1e-6)


def test_for_segmentation_median_is_per_image_frequency(voc_segmentation):
    # Eigen & Fergus differ from the pooled frequency as soon as classes sit in
    # different images, which they do here.
    counts, _ = counted_pixels(SEGMENTATION_MASKS, 21)
    pooled = cw.median_frequency(counts)
    assert not np.allclose(cw.for_segmentation(voc_segmentation), pooled, rtol=1e-3)


def test_for_segmentation_errors(tmp_path):
    from gluoncv.data import VOCSegmentation
    with pytest.raises(ValueError, match="cannot read the masks of a SimpleDataset"):
        cw.for_segmentation(mx.gluon.data.SimpleDataset([1, 2]))
    bad = [m.copy() for m in SEGMENTATION_MASKS[:2]]
    bad[1][0, 0] = 30
    write_voc_segmentation(str(tmp_path), bad)
    dataset = VOCSegmentation(root=str(tmp_path), split="train")
    with pytest.raises(ValueError, match=r"2012_000001.png: labels contains 30.0, which is "
                                         r"outside \[0, 21\)"):
        cw.for_segmentation(dataset)
    np.testing.assert_allclose(cw.for_segmentation(dataset, num_class=31, method="inverse"),
                               cw.inverse_frequency(counted_pixels(bad, 31)[0]), rtol=1e-6)


def test_for_segmentation_follows_the_dataset_own_mask_convention(tmp_path, monkeypatch):
    # ADE20K's files store class c as c + 1 and void as 0; its _mask_transform
    # subtracts 1, so void arrives as -1 and is skipped.
    from PIL import Image
    from gluoncv.data import ADE20KSegmentation
    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "training").mkdir(parents=True)
    (base / "annotations" / "training").mkdir(parents=True)
    files = random_masks(3, num_class=150, seed=7)
    for i, mask in enumerate(files):
        stored = np.where(mask == 255, 0, mask + 1).astype(np.uint8)
        Image.fromarray(stored).save(base / "annotations" / "training" / ("%d.png" % i))
        Image.fromarray(np.zeros(mask.shape + (3,), np.uint8)).save(
            base / "images" / "training" / ("%d.jpg" % i))
    dataset = ADE20KSegmentation(root=str(tmp_path), split="train")
    refuse_image_decoding(monkeypatch)
    counts, image_pixels = counted_pixels(files, 150)
    np.testing.assert_allclose(cw.for_segmentation(dataset),
                               cw.median_frequency(counts, image_pixels=image_pixels), rtol=1e-6)


def test_from_counts_dispatches_by_name():
    counts = np.array([100.0, 10.0, 1.0])
    np.testing.assert_array_equal(cw.from_counts("none", counts), np.ones(3, np.float32))
    np.testing.assert_array_equal(cw.from_counts("inverse", counts), cw.inverse_frequency(counts))
    np.testing.assert_array_equal(cw.from_counts("median", counts), cw.median_frequency(counts))
    np.testing.assert_array_equal(cw.from_counts("effective", counts, beta=0.9),
                                  cw.effective_number(counts, beta=0.9))
    with pytest.raises(ValueError, match="method.*'auto'"):
        cw.from_counts("auto", counts)
