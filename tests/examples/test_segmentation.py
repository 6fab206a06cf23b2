"""Smoke tests of examples/segmentation: generated data, metrics, weights, outputs, resume."""
import json
import os

import numpy as np
import mxnet as mx
import pytest
from PIL import Image

from examples.segmentation import data, evaluate, report
from examples.segmentation.cli import run_sweep
from examples.segmentation.train import train_run
from gluon_losses import class_weights
from voc_folders import counted_pixels

# A few seconds per run: 32x32 images, narrow stages, two short epochs.
TINY = dict(epochs=2, batch_size=4, lr=0.05, widths=(4, 8, 8, 8), max_iters=3,
            lr_decay_epochs=(1,), quiet=True)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return data.generate(str(tmp_path_factory.mktemp("voc")), num_train=40, num_test=16,
                         size=32, seed=3)


def read_png(path):
    return np.array(Image.open(path))


def test_generated_set_is_imbalanced_with_void_borders_and_disjoint_splits(tmp_path):
    root = data.generate(str(tmp_path), num_train=150, num_test=50, size=64, seed=1)
    voc = os.path.join(root, "VOC2012")
    lists = {}
    for name in ("train", "trainval", "val"):
        with open(os.path.join(voc, "ImageSets", "Segmentation", name + ".txt")) as handle:
            lists[name] = handle.read().split()
    assert len(lists["train"]) == 150 and len(lists["val"]) == 50
    assert lists["trainval"] == lists["train"]          # what VOCSegmentation('train') reads
    assert not set(lists["train"]) & set(lists["val"])
    masks = np.stack([read_png(os.path.join(voc, "SegmentationClass", n + ".png"))
                      for n in lists["train"]])
    assert Image.open(os.path.join(voc, "SegmentationClass", lists["train"][0] + ".png")).mode \
        == "P"
    assert set(np.unique(masks)) <= set(range(data.NUM_CLASS)) | {data.VOID}
    shares = data.pixel_shares(np.where(masks == data.VOID, -1, masks).astype(np.int64))
    rare = data.CLASSES.index("speck")
    assert 0 < shares[rare] < 0.02
    assert shares[rare] == shares[1:].min() and shares[0] > 0.8
    # every object is ringed by void: each labelled foreground pixel that touches the
    # outside of its object touches void, never another class or background directly
    void = masks == data.VOID
    assert void.mean() > 0.01
    fg, bg = (masks > 0) & ~void, masks == 0
    assert fg.any()
    for axis in (1, 2):
        first = [slice(None)] * 3
        second = [slice(None)] * 3
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        first, second = tuple(first), tuple(second)
        assert not (fg[first] & bg[second]).any() and not (bg[first] & fg[second]).any()
    # one seed, one set
    again = data.make_sample(np.random.RandomState([1, 0, 7]), 64)
    np.testing.assert_array_equal(again[1], masks[7])


def test_gluoncv_reader_maps_void_to_minus_one_and_weights_match_counts(voc_root):
    train = data.voc_dataset(voc_root, "train")
    test = data.voc_dataset(voc_root, "test")
    assert len(train) == 40 and len(test) == 16
    images, labels = data.load_arrays(train)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    raw = np.stack([read_png(path) for path in train.masks])
    np.testing.assert_array_equal(labels == -1, raw == 255)
    np.testing.assert_array_equal(labels[raw != 255], raw[raw != 255])
    # float64 reference of Eigen & Fergus's per-image frequency
    counts, image_pixels = counted_pixels(raw, data.NUM_CLASS)
    frequency = counts / image_pixels
    expected = np.median(frequency) / frequency
    # the weights the sweep trains with: for_segmentation of the generated VOC folder
    median = class_weights.for_segmentation(train, method="median", num_class=data.NUM_CLASS)
    np.testing.assert_allclose(median, expected, rtol=1e-6)
    beta = 0.99999
    effective = 1 / ((1 - beta ** counts) / (1 - beta))
    np.testing.assert_allclose(
        class_weights.for_segmentation(train, method="effective", beta=beta,
                                       num_class=data.NUM_CLASS),
        effective * data.NUM_CLASS / effective.sum(), rtol=1e-5)


def test_confusion_matrix_and_iou_by_hand_and_against_gluoncv():
    labels = np.array([[0, 0, 1, -1], [2, 1, 1, 0]])
    predicted = np.array([[0, 1, 1, 2], [2, 2, 1, 0]])
    matrix = evaluate.confusion_matrix(labels, predicted, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 2, 1], [0, 0, 1]])
    result = evaluate.scores(matrix)
    np.testing.assert_allclose(result["iou"], [2 / 3, 2 / 4, 1 / 2])
    assert result["miou"] == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    assert result["pixel_accuracy"] == pytest.approx(5 / 7)
    # an absent class (empty union) is NaN and left out of the mean
    absent = evaluate.scores(evaluate.confusion_matrix(labels, predicted, 4))
    assert np.isnan(absent["iou"][3]) and absent["miou"] == pytest.approx(result["miou"])

    from gluoncv.utils.metrics import SegmentationMetric
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(3, 5, 8, 8))
    target = rng.randint(-1, 5, size=(3, 8, 8))
    metric = SegmentationMetric(5)
    metric.update(mx.nd.array(target), mx.nd.array(logits))
    ours = evaluate.scores(evaluate.confusion_matrix(target, logits.argmax(1), 5))
    np.testing.assert_allclose(ours["iou"], metric.total_inter / metric.total_union)
    pix_acc, miou = metric.get()
    assert ours["pixel_accuracy"] == pytest.approx(pix_acc)
    assert ours["miou"] == pytest.approx(miou)


def small_split(voc_root):
    return (data.load_arrays(data.voc_dataset(voc_root, "train")),
            data.load_arrays(data.voc_dataset(voc_root, "test")))


def test_train_run_writes_results_checkpoints_and_predictions(voc_root, tmp_path, capfd):
    train, test = small_split(voc_root)
    weight = np.array([0.2, 1, 1, 2, 5], dtype=np.float32)
    results = train_run(str(tmp_path), train, test, data.NUM_CLASS, weight, seed=1,
                        display_indices=[0, 3], **dict(TINY, quiet=False))
    assert "epoch 2/2" in capfd.readouterr().err            # the tqdm bar
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["final"]["miou"] == results["final"]["miou"]
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    assert saved["history"][1]["lr"] == pytest.approx(0.005)    # decayed after epoch 1
    assert all(np.isfinite(h["train_loss"]) for h in saved["history"])
    matrix = np.array(saved["final"]["confusion"])
    assert matrix.sum() == (test[1] >= 0).sum()
    record = json.loads((tmp_path / "checkpoints" / "checkpoint.json").read_text())
    assert record["epoch"] == 2
    for fname in record["files"].values():
        assert (tmp_path / "checkpoints" / fname).stat().st_size > 0
    predictions = np.load(tmp_path / "predictions.npz")
    assert predictions["predicted"].shape == (2, 32, 32)
    assert predictions["indices"].tolist() == [0, 3]


def test_resume_ends_bitwise_equal_to_an_uninterrupted_run(voc_root, tmp_path, capfd):
    train, test = small_split(voc_root)
    weight = np.array([0.2, 1, 1, 2, 5], dtype=np.float32)
    straight = train_run(str(tmp_path / "straight"), train, test, data.NUM_CLASS, weight,
                         seed=2, **TINY)
    cut = dict(TINY, epochs=1)
    train_run(str(tmp_path / "cut"), train, test, data.NUM_CLASS, weight, seed=2, **cut)
    capfd.readouterr()
    resumed = train_run(str(tmp_path / "cut"), train, test, data.NUM_CLASS, weight, seed=2,
                        resume=True, **TINY)
    assert "epoch" not in capfd.readouterr().err            # quiet: no bar
    a = mx.nd.load(str(tmp_path / "straight" / "checkpoints" / "net-0002.params"))
    b = mx.nd.load(str(tmp_path / "cut" / "checkpoints" / "net-0002.params"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key].asnumpy(), b[key].asnumpy(), err_msg=key)
    assert resumed["final"] == straight["final"]
    assert [h["train_loss"] for h in resumed["history"]] == \
        [h["train_loss"] for h in straight["history"]]


def test_sweep_writes_summary_table_and_plots(voc_root, tmp_path):
    out = str(tmp_path / "sweep")
    args = dict(TINY)
    args.pop("quiet")
    summary = run_sweep(out, ["none", "median"], [0, 1], data_dir=str(tmp_path / "data"),
                        num_train=16, num_test=8, image_size=32, data_seed=5, quiet=True,
                        **args)
    for name in ("results.json", "summary.md", "segmentation_curves.png",
                 "segmentation_masks.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    stats = summary["by_method"]["median"]["miou"]
    runs = [json.load(open(os.path.join(out, "runs", "median-seed%d" % s, "results.json")))
            for s in (0, 1)]
    values = [r["final"]["miou"] for r in runs]
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values))
    assert stats["min"] == min(values) and stats["max"] == max(values)
    assert summary["by_method"]["none"]["class_weight"] == [1.0] * data.NUM_CLASS
    table = open(os.path.join(out, "summary.md")).read()
    assert "| median | %.3f ± %.3f" % (stats["mean"], stats["std"]) in table
    # a resumed sweep keeps the finished runs as they are
    again = run_sweep(out, ["none", "median"], [0, 1], data_dir=str(tmp_path / "data"),
                      num_train=16, num_test=8, image_size=32, data_seed=5, quiet=True,
                      resume=True, **args)
    assert again["by_method"] == summary["by_method"]


def test_display_indices_prefer_images_with_the_rare_class():
    labels = np.zeros((6, 4, 4), dtype=np.int64)
    labels[2, 0, 0] = 4
    labels[5, 1, 1] = 4
    assert report.display_indices(labels, 4, count=4) == [2, 5, 0]


def test_two_cpu_contexts_split_each_batch(voc_root, tmp_path):
    train, test = small_split(voc_root)
    results = train_run(str(tmp_path), train, test, data.NUM_CLASS, None, seed=0,
                        ctx=[mx.cpu(0), mx.cpu(1)], **dict(TINY, epochs=1))
    assert np.isfinite(results["history"][0]["train_loss"])
    assert np.array(results["final"]["confusion"]).sum() == (test[1] >= 0).sum()
