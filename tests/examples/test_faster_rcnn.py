"""examples/faster_rcnn: smoke run, checkpoint/export round trip, and that the
weighted RCNN classification loss sees exactly GluonCV's cls_pred / cls_targets."""
import json
import os

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from examples.faster_rcnn import train as T
from examples.faster_rcnn.data import ShapesDetection


class _Recorder(object):
    """Calls ``target`` and remembers the arguments and the result."""

    def __init__(self, target):
        self.target = target
        self.calls = []

    def __call__(self, *args):
        out = self.target(*args)
        self.calls.append((args, out))
        return out


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


def _tiny_setup(shapes_root, weighting="effective", **overrides):
    args = T.parse_args(["--data-root", shapes_root, "--shapes-train", "8", "--shapes-test", "4",
                         "--class-weighting", weighting])
    train_set, _, classes = T.build_datasets(args)
    mx.random.seed(0)
    np.random.seed(0)
    net = T.tiny_faster_rcnn(classes, per_device_batch_size=args.batch_size, **overrides)
    T.init_net(net, [mx.cpu()])
    counts = T.foreground_counts(train_set, len(classes))
    return args, train_set, classes, net, T.rcnn_class_weight(args, counts)


def test_weighted_loss_receives_gluoncv_cls_pred_and_cls_targets(shapes_root):
    # Only 64 proposals (= num_sample) go through a strict NMS, so some are suppressed;
    # GluonCV's sampler leaves those slots unsampled and its target generator marks them -1.
    args, train_set, classes, net, weight = _tiny_setup(
        shapes_root, rpn_train_pre_nms=64, rpn_train_post_nms=64, rpn_nms_thresh=0.3)
    losses = T.make_losses(args, weight)
    from gluon_losses import WeightedSoftmaxCELoss
    assert isinstance(losses["rcnn_cls"], WeightedSoftmaxCELoss)
    spy_loss = _Recorder(losses["rcnn_cls"])
    losses["rcnn_cls"] = spy_loss
    spy_net = _Recorder(net)
    step = T.DetectionStep(spy_net, losses, weighted=True)
    parts = step.forward_backward(T.fixed_shard(net, train_set, args.batch_size))

    (net_args, out), = spy_net.calls
    (loss_args, loss_out), = spy_loss.calls
    assert len(out) == len(T.TRAIN_OUTPUTS)
    cls_pred, samples, cls_targets = out[0], out[3], out[8]
    # exactly the model's arrays, not copies, reshapes or masks of them
    assert len(loss_args) == 2
    assert loss_args[0] is cls_pred
    # cls_targets goes in detached (no gradient path): the same values, shape and dtype
    assert loss_args[1].shape == cls_targets.shape and loss_args[1].dtype == cls_targets.dtype
    assert np.array_equal(loss_args[1].asnumpy(), cls_targets.asnumpy())
    batch, num_sample, num_cls = args.batch_size, 64, len(classes) + 1
    assert cls_pred.shape == (batch, num_sample, num_cls)
    assert cls_targets.shape == (batch, num_sample)
    targets = cls_targets.asnumpy()
    assert set(np.unique(targets)) <= set(range(-1, num_cls))
    # -1 exactly where GluonCV's sampler left a slot unsampled, and some such slots exist
    assert np.array_equal(targets == -1, samples.asnumpy() == 0)
    assert (targets == -1).sum() > 0 and (targets == 0).sum() > 0 and (targets > 0).sum() > 0
    assert loss_out.shape == (batch,)
    assert parts[2] is loss_out
    assert all(np.isfinite(p.asnumpy()).all() for p in parts)
    assert len(weight) == num_cls and weight[0] == args.background_weight


def test_unit_weights_match_gluoncv_masked_softmax_loss(shapes_root):
    """With unit weights the drop-in equals GluonCV's mask-and-rescale, value and gradient."""
    args, train_set, classes, net, _ = _tiny_setup(
        shapes_root, "none", rpn_train_pre_nms=64, rpn_train_post_nms=64, rpn_nms_thresh=0.3)
    shard = T.fixed_shard(net, train_set, args.batch_size)
    with autograd.train_mode():
        out = net(shard[0], shard[1][:, :, :4], shard[1][:, :, 4:5])
    cls_pred, cls_targets = out[0].detach(), out[8].detach()
    assert (cls_targets.asnumpy() == -1).any()

    from gluon_losses import WeightedSoftmaxCELoss
    step_w = T.DetectionStep(net, {"rcnn_cls": WeightedSoftmaxCELoss(
        class_weight=np.ones(len(classes) + 1), ignore_label=-1, normalization="valid")}, True)
    step_g = T.DetectionStep(net, {"rcnn_cls": gluon.loss.SoftmaxCrossEntropyLoss()}, False)
    values, grads = [], []
    for step in (step_w, step_g):
        pred = cls_pred.copy()
        pred.attach_grad()
        with autograd.record():
            loss = step.rcnn_cls_loss(pred, cls_targets)
        loss.backward()
        values.append(loss.sum().asscalar())
        grads.append(pred.grad.asnumpy())
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_smoke_train_checkpoint_resume_export(tmp_path, shapes_root):
    out = str(tmp_path / "run")
    common = ["--data-root", shapes_root, "--shapes-train", "8", "--shapes-test", "4",
              "--max-iters", "3", "--val-interval", "1", "--out", out, "--quiet"]
    result = T.main(common + ["--epochs", "1", "--no-export", "--hybridize"])
    assert len(result["history"]) == 1
    for key in ("rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"):
        assert np.isfinite(result["history"][0][key])
    assert 0.0 <= result["history"][0]["ap"]["mAP"] <= 1.0
    record = json.load(open(os.path.join(out, "checkpoint.json")))
    assert record["epoch"] == 0
    assert os.path.exists(os.path.join(out, record["files"]["net"]))
    assert os.path.exists(os.path.join(out, record["files"]["trainer"]))

    # the checkpoint loads into a fresh network
    args = T.parse_args(common)
    fresh = T.build_net(args, ShapesDetection.CLASSES)
    T.init_net(fresh, [mx.cpu()])
    fresh.load_parameters(os.path.join(out, record["files"]["net"]), ctx=mx.cpu())

    # --resume continues at epoch 1 and then exports
    result = T.main(common + ["--epochs", "2", "--resume", out])
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    assert json.load(open(os.path.join(out, "checkpoint.json")))["epoch"] == 1
    prefix = result["export"]
    for suffix in ("-symbol.json", "-0000.params", "-meta.json"):
        assert os.path.exists(prefix + suffix)

    from examples.faster_rcnn import infer
    net, meta = infer.load_detector(prefix)
    assert meta["classes"] == list(ShapesDetection.CLASSES)
    test_set = ShapesDetection("test", 4, 0, root=shapes_root)
    image_path = test_set.save_image(0, str(tmp_path / "img.png"))
    found = infer.main([prefix, image_path, "--threshold", "0.0",
                        "--out", str(tmp_path / "boxes.png")])
    assert os.path.getsize(str(tmp_path / "boxes.png")) > 0
    for name, score, box in found:
        assert name in meta["classes"] and 0.0 <= score <= 1.0 and len(box) == 4
    lines = T.summarize([out])
    assert len(lines) == 3 and lines[0].startswith("| run | RCNN cls loss") and "mAP" in lines[0]


def test_shapes_set_is_deterministic_and_imbalanced(tmp_path):
    a = ShapesDetection("train", 30, seed=3, root=str(tmp_path / "a"))
    b = ShapesDetection("train", 30, seed=3, root=str(tmp_path / "b"))
    c = ShapesDetection("train", 30, seed=3, root=str(tmp_path / "a"))  # from the cache
    for i in range(30):
        assert np.array_equal(a[i][0].asnumpy(), b[i][0].asnumpy())
        assert np.array_equal(a[i][1], b[i][1]) and np.array_equal(a[i][1], c[i][1])
    big = ShapesDetection("train", 300, seed=0, root=str(tmp_path / "a"))
    counts = T.foreground_counts(big, 4)
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0
    test = ShapesDetection("test", 30, seed=3, root=str(tmp_path / "a"))
    assert not np.array_equal(test[0][0].asnumpy(), a[0][0].asnumpy())


def test_cli_errors():
    with pytest.raises(SystemExit):
        T.parse_args(["--dataset", "voc"])  # needs --data-root
    with pytest.raises(SystemExit):
        T.parse_args(["--dataset", "lst"])  # needs a file
    try:
        import horovod.mxnet  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="horovod"):
            T.main(["--horovod", "--quiet", "--out", "/nonexistent-never-written"])


def _write_lst(dataset, folder, name):
    """A GluonCV .lst file (normalized corners) with the dataset's images as PNGs."""
    lines = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        h, w = image.shape[:2]
        fname = "%s-%03d.png" % (name, i)
        dataset.save_image(i, os.path.join(folder, fname))
        fields = [str(i), "2", "5"]
        for x1, y1, x2, y2, cls in label:
            fields += ["%d" % cls, "%.6f" % (x1 / w), "%.6f" % (y1 / h), "%.6f" % (x2 / w),
                       "%.6f" % (y2 / h)]
        lines.append("\t".join(fields + [fname]))
    path = os.path.join(folder, name + ".lst")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_lst_dataset_and_two_cpu_contexts(tmp_path, shapes_root):
    folder = str(tmp_path)
    train_lst = _write_lst(ShapesDetection("train", 8, 0, root=shapes_root), folder, "train")
    test_lst = _write_lst(ShapesDetection("test", 4, 0, root=shapes_root), folder, "test")
    result = T.main(["--dataset", "lst", train_lst, test_lst, "--ctx", "cpu:0,cpu:1",
                     "--classes", ",".join(ShapesDetection.CLASSES), "--epochs", "1",
                     "--max-iters", "1", "--no-export", "--quiet", "--class-weighting", "median",
                     "--out", os.path.join(folder, "run")])
    assert result["classes"] == list(ShapesDetection.CLASSES)
    assert result["train_counts"] == T.foreground_counts(
        ShapesDetection("train", 8, 0, root=shapes_root), 4).tolist()
    assert np.isfinite(result["history"][0]["rcnn_cls"])
    assert "mAP" in result["final_ap"]


def _write_voc(root, splits):
    """A tiny VOC2007 folder (JPEGImages, Annotations, ImageSets/Main) from shapes images."""
    voc_names = ("bottle", "car", "cat", "dog")  # VOC class names for the four shapes
    base = os.path.join(root, "VOC2007")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for split, dataset in splits.items():
        ids = []
        for i in range(len(dataset)):
            image, label = dataset[i]
            name = "%s%04d" % (split, i)
            ids.append(name)
            dataset.save_image(i, os.path.join(base, "JPEGImages", name + ".jpg"))
            objects = "".join(
                "<object><name>%s</name><difficult>0</difficult><bndbox><xmin>%d</xmin>"
                "<ymin>%d</ymin><xmax>%d</xmax><ymax>%d</ymax></bndbox></object>"
                % (voc_names[int(c)], x1 + 1, y1 + 1, x2 + 1, y2 + 1)
                for x1, y1, x2, y2, c in label)
            with open(os.path.join(base, "Annotations", name + ".xml"), "w") as handle:
                handle.write("<annotation><size><width>%d</width><height>%d</height>"
                             "<depth>3</depth></size>%s</annotation>"
                             % (image.shape[1], image.shape[0], objects))
        with open(os.path.join(base, "ImageSets", "Main", split + ".txt"), "w") as handle:
            handle.write("\n".join(ids) + "\n")


def test_voc_dataset(tmp_path, shapes_root):
    root = str(tmp_path / "voc")
    _write_voc(root, {"trainval": ShapesDetection("train", 8, 0, root=shapes_root),
                      "test": ShapesDetection("test", 4, 0, root=shapes_root)})
    result = T.main(["--dataset", "voc", "--data-root", root, "--epochs", "1", "--max-iters",
                     "1", "--no-export", "--quiet", "--short", "128", "--max-size", "160",
                     "--out", str(tmp_path / "run")])
    assert len(result["classes"]) == 20 and result["classes"][4] == "bottle"
    counts = result["train_counts"]
    assert sum(counts) == sum(len(l) for l in ShapesDetection("train", 8, 0, root=shapes_root)
                              .label_list())
    assert len(result["class_weight"]) == 21  # background + the 20 VOC classes
    assert np.isfinite(result["history"][0]["rcnn_cls"]) and "mAP" in result["final_ap"]
