"""examples/faster_rcnn: the weighted RCNN classification loss sees exactly GluonCV's
cls_pred / cls_targets; the training run, its checkpoint, exact resume, export, inference
and summary; the command lines; the three data sources; two CPU contexts."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from examples.faster_rcnn import data, infer, model, summarize
from examples.faster_rcnn import train as T
from examples.faster_rcnn.data import ShapesDetection
from voc_folders import VOC_CLASSES, write_voc_detection

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def _first_shard(net, dataset, batch_size):
    """The first ``batch_size`` images through the training pipeline, as one CPU shard."""
    loader = data.train_loader(dataset, net, batch_size, shuffle=False)
    return T.shards(next(iter(loader)), [mx.cpu()])[0]


def _tiny_setup(shapes_root, weighting="effective", batch_size=2, **overrides):
    train_set, _, classes = data.shapes_datasets(shapes_root, 8, 4, seed=0)
    mx.random.seed(0)
    np.random.seed(0)
    net = model.tiny_faster_rcnn(classes, per_device_batch_size=batch_size, **overrides)
    model.init_net(net, [mx.cpu()])
    counts = data.foreground_counts(train_set, len(classes))
    return train_set, classes, net, T.rcnn_class_weight(counts, weighting, beta=0.99)


def _save_image(image, path):
    """An HWC RGB uint8 NDArray as an image file."""
    import cv2
    cv2.imwrite(path, image.asnumpy()[:, :, ::-1])
    return path


def test_weighted_loss_receives_gluoncv_cls_pred_and_cls_targets(shapes_root):
    # Only 64 proposals (= num_sample) go through a strict NMS, so some are suppressed;
    # GluonCV's sampler leaves those slots unsampled and its target generator marks them -1.
    train_set, classes, net, weight = _tiny_setup(
        shapes_root, rpn_train_pre_nms=64, rpn_train_post_nms=64, rpn_nms_thresh=0.3)
    losses = T.make_losses("weighted", weight)
    from gluon_losses import WeightedSoftmaxCELoss
    assert isinstance(losses["rcnn_cls"], WeightedSoftmaxCELoss)
    spy_loss = _Recorder(losses["rcnn_cls"])
    losses["rcnn_cls"] = spy_loss
    spy_net = _Recorder(net)
    step = T.DetectionStep(spy_net, losses, weighted=True)
    parts = step.forward_backward(_first_shard(net, train_set, 2))

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
    batch, num_sample, num_cls = 2, 64, len(classes) + 1
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
    assert len(weight) == num_cls and weight[0] == 1.0  # background_weight


def test_unit_weights_match_gluoncv_masked_softmax_loss(shapes_root):
    """With unit weights the drop-in equals GluonCV's mask-and-rescale, value and gradient."""
    train_set, classes, net, _ = _tiny_setup(
        shapes_root, "none", rpn_train_pre_nms=64, rpn_train_post_nms=64, rpn_nms_thresh=0.3)
    shard = _first_shard(net, train_set, 2)
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


def test_train_checkpoint_resume_export_infer_summarize(tmp_path, shapes_root):
    out = str(tmp_path / "run")
    # warm-up ends and the lr decays within the 6 steps of two epochs
    config = T.Config(data_root=shapes_root, shapes_train=8, shapes_test=4, max_iters=3,
                      lr_warmup=2, lr_decay_epochs="1", out=out, quiet=True, epochs=1,
                      export=False)
    result = T.train(config)
    assert [h["epoch"] for h in result["history"]] == [1]
    for key in T.LOSS_NAMES:
        assert np.isfinite(result["history"][0][key])
    assert 0.0 <= result["history"][0]["ap"]["mAP"] <= 1.0
    assert result["config"]["hybridize"] is True
    assert json.load(open(os.path.join(out, "args.json")))["lr_decay_epochs"] == "1"
    checkpoints = os.path.join(out, "checkpoints")
    record = json.load(open(os.path.join(checkpoints, "checkpoint.json")))
    assert record["epoch"] == 1
    assert os.path.exists(os.path.join(checkpoints, record["files"]["net"]))
    assert os.path.exists(os.path.join(checkpoints, record["files"]["trainer"]))
    written = json.load(open(os.path.join(out, "results.json")))["history"][0]
    assert all(written[k] == result["history"][0][k] for k in T.LOSS_NAMES + ("lr",))

    # the checkpoint loads into a fresh network
    fresh = model.build_net("tiny", ShapesDetection.CLASSES, 2)
    model.init_net(fresh, [mx.cpu()])
    fresh.load_parameters(os.path.join(checkpoints, record["files"]["net"]), ctx=mx.cpu())

    # a resumed run continues the saved experiment only
    with pytest.raises(ValueError, match="lr 0.5 .saved: 0.02."):
        T.train(dataclasses.replace(config, epochs=2, resume=out, lr=0.5))

    # resumed, epoch 2 is the epoch 2 of an uninterrupted run: same learning rate (from
    # the checkpointed schedule) and same losses; runtime settings may change
    resumed = T.train(dataclasses.replace(config, epochs=2, resume=out, export=True,
                                          val_interval=2))
    straight = T.train(dataclasses.replace(config, epochs=2, out=str(tmp_path / "straight")))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][1]["lr"] == straight["history"][1]["lr"] == pytest.approx(0.002)
    for key in T.LOSS_NAMES:
        assert resumed["history"][1][key] == straight["history"][1][key]
    assert json.load(open(os.path.join(checkpoints, "checkpoint.json")))["epoch"] == 2
    prefix = resumed["export"]
    for suffix in ("-symbol.json", "-0000.params", "-meta.json"):
        assert os.path.exists(prefix + suffix)

    net, meta = infer.load_detector(prefix)
    assert meta["classes"] == list(ShapesDetection.CLASSES)
    image = ShapesDetection("test", 4, 0, root=shapes_root)[0][0]
    found = infer.detect(net, meta, image, threshold=0.0)
    assert found
    for name, score, box in found:
        assert name in meta["classes"] and 0.0 <= score <= 1.0 and len(box) == 4
    assert [f[1] for f in found] == sorted((f[1] for f in found), reverse=True)
    drawn = infer.draw(image, found, meta["classes"], str(tmp_path / "boxes.png"))
    assert mx.image.imread(drawn).shape[:2] == (2 * image.shape[0], 2 * image.shape[1])

    runs = summarize.load_runs([out, out])
    lines = summarize.table(runs)
    assert lines[0].startswith("| run | RCNN cls loss") and "star (%d)" % resumed[
        "train_counts"][3] in lines[0]
    assert "weighted, effective beta=0.99" in lines[2] and "**%.3f**" % resumed["final_ap"][
        "mAP"] in lines[2]
    assert lines[-1].startswith("| mean of 2 seeds")
    assert os.path.getsize(summarize.plot(runs, str(tmp_path / "curves.png"))) > 0


def test_command_lines(tmp_path, shapes_root):
    """The three programs as a user runs them (the functions above are what they call)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = str(tmp_path / "run")

    def run(*argv):
        return subprocess.run([sys.executable, "-m"] + list(argv), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    done = run("examples.faster_rcnn", "--data-root", shapes_root, "--shapes-train", "4",
               "--shapes-test", "2", "--epochs", "1", "--max-iters", "1", "--no-hybridize",
               "--lr-decay-epochs", "1", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet
    saved = json.load(open(os.path.join(out, "args.json")))
    assert saved["hybridize"] is False and saved["lr_decay_epochs"] == "1"
    refused = run("examples.faster_rcnn", "--resume", out, "--epochs", "2", "--beta", "0.9")
    assert refused.returncode == 2 and "--beta 0.9 (saved: 0.99)" in refused.stderr
    table = run("examples.faster_rcnn.summarize", out)
    assert table.returncode == 0 and table.stdout.startswith("| run | RCNN cls loss")
    image = _save_image(ShapesDetection("test", 2, 0, root=shapes_root)[0][0],
                        str(tmp_path / "img.png"))
    drawn = run("examples.faster_rcnn.infer", os.path.join(out, "export", "faster_rcnn"),
                image, "--threshold", "0", "--out", str(tmp_path / "boxes.png"))
    assert drawn.returncode == 0, drawn.stderr
    assert os.path.getsize(str(tmp_path / "boxes.png")) > 0


def test_shapes_set_is_deterministic_and_imbalanced(tmp_path):
    a = ShapesDetection("train", 30, seed=3, root=str(tmp_path / "a"))
    b = ShapesDetection("train", 30, seed=3, root=str(tmp_path / "b"))
    c = ShapesDetection("train", 30, seed=3, root=str(tmp_path / "a"))  # from the cache
    for i in range(30):
        assert np.array_equal(a[i][0].asnumpy(), b[i][0].asnumpy())
        assert np.array_equal(a[i][1], b[i][1]) and np.array_equal(a[i][1], c[i][1])
    big = ShapesDetection("train", 300, seed=0, root=str(tmp_path / "a"))
    counts = data.foreground_counts(big, 4)
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0
    test = ShapesDetection("test", 30, seed=3, root=str(tmp_path / "a"))
    assert not np.array_equal(test[0][0].asnumpy(), a[0][0].asnumpy())


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="data_root"):
        T.Config(dataset="voc")
    with pytest.raises(ValueError, match="lst_train"):
        T.Config(dataset="lst")
    with pytest.raises(ValueError, match="class_weighting.*'inverse_frequency'"):
        T.Config(class_weighting="inverse_frequency")
    with pytest.raises(ValueError, match="lr decay epochs.*'9,7'"):
        T.Config(lr_decay_epochs="9,7")
    try:
        import horovod.mxnet  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="horovod"):
            T.train(T.Config(horovod=True, quiet=True, out=str(tmp_path / "never")))
        assert not os.path.exists(str(tmp_path / "never"))


def _write_lst(dataset, folder, name):
    """A GluonCV .lst file (normalized corners) with the dataset's images as PNGs."""
    lines = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        h, w = image.shape[:2]
        fname = "%s-%03d.png" % (name, i)
        _save_image(image, os.path.join(folder, fname))
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
    result = T.train(T.Config(dataset="lst", lst_train=train_lst, lst_test=test_lst,
                              ctx="cpu:0,cpu:1", classes=ShapesDetection.CLASSES, epochs=1,
                              max_iters=1, export=False, quiet=True, class_weighting="median",
                              out=os.path.join(folder, "run")))
    assert result["classes"] == list(ShapesDetection.CLASSES)
    assert result["train_counts"] == data.foreground_counts(
        ShapesDetection("train", 8, 0, root=shapes_root), 4).tolist()
    assert np.isfinite(result["history"][0]["rcnn_cls"])
    assert "mAP" in result["final_ap"]


def test_voc_dataset(tmp_path):
    root = str(tmp_path / "voc")
    images = [[("bottle", 0), ("car", 0)], [("cat", 0)], [("dog", 1), ("car", 0)],
              [("bottle", 0)]] * 2
    write_voc_detection(root, images)
    result = T.train(T.Config(dataset="voc", data_root=root, voc_test="2007/trainval",
                              epochs=1, max_iters=1, export=False, quiet=True, short=128,
                              max_size=160, out=str(tmp_path / "run")))
    assert result["classes"] == list(VOC_CLASSES)
    counts = dict(zip(result["classes"], result["train_counts"]))
    assert {c: n for c, n in counts.items() if n} == {"bottle": 4, "car": 4, "cat": 2, "dog": 2}
    assert len(result["class_weight"]) == 21  # background + the 20 VOC classes
    assert np.isfinite(result["history"][0]["rcnn_cls"]) and "mAP" in result["final_ap"]
