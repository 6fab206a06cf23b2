"""The docs' GluonCV recipes, run inside GluonCV's own training code.

(a) Faster R-CNN: the RCNN classification loss handed to GluonCV 0.10's
    ``ForwardBackwardTask``, which computes
    ``rcnn_cls_loss(cls_pred, cls_targets, cls_targets.expand_dims(-1) >= 0)
    * cls_targets.size / num_rcnn_pos``.
(b) Segmentation: ``MixWeightedSoftmaxCELoss`` in GluonCV's ``DataParallelCriterion``
    on two CPU contexts, threaded (``sync=True``) and serial.
"""
import os
import textwrap

import numpy as np
import pytest
import mxnet as mx
from mxnet import gluon

from gluon_losses import MixWeightedSoftmaxCELoss, WeightedSoftmaxCELoss, class_weights
from reference import softmax_ce
from voc_folders import random_masks, write_voc_detection, write_voc_segmentation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

B, N, K, A = 2, 16, 4, 12  # images, RCNN samples per image, foreground classes, anchors


class ScriptedRCNN(gluon.Block):
    """Stands in for GluonCV's Faster R-CNN in ``ForwardBackwardTask``.

    It returns the twelve training outputs the task unpacks. ``cls_pred`` is a
    parameter, so its gradient can be read after the task's backward pass; the
    other outputs are fixed arrays, and ``cls_targets`` has -1 (unsampled) slots.
    """

    def __init__(self, cls_pred, cls_targets, ctx):
        super().__init__()
        rng = np.random.RandomState(1)
        with self.name_scope():
            self.cls_pred = self.params.get("cls_pred", shape=cls_pred.shape)
            self.target_generator = gluon.Block()  # the task resets its (empty) contexts
        self.cls_pred.initialize(ctx=ctx)
        self.cls_pred.set_data(mx.nd.array(cls_pred))
        self._fixed = [mx.nd.array(a, ctx=ctx) for a in (
            rng.randn(B, N, K, 4), rng.randn(B, A, 1), rng.randn(B, A, 4), cls_targets,
            rng.randn(B, N, K, 4), rng.rand(B, N, K, 4) > 0.5)]

    def forward(self, data, gt_box, gt_label):
        box_pred, rpn_score, rpn_box, cls_targets, box_targets, box_masks = self._fixed
        return (self.cls_pred.data(data.context), box_pred, None, None, None, rpn_score, rpn_box,
                None, cls_targets, box_targets, box_masks, None)


def _rcnn_batch(seed=0):
    rng = np.random.RandomState(seed)
    cls_pred = rng.randn(B, N, K + 1).astype(np.float32) * 2
    cls_targets = rng.randint(0, K + 1, (B, N)).astype(np.float32)
    cls_targets[rng.rand(B, N) < 0.25] = -1
    assert (cls_targets == -1).any()
    return cls_pred, cls_targets


def _run_task(rcnn_cls_loss, cls_pred, cls_targets, ctx=mx.cpu()):
    """One GluonCV ``ForwardBackwardTask.forward_backward``: the RCNN CE metric and d/d cls_pred."""
    from gluoncv.model_zoo.rcnn.faster_rcnn.data_parallel import ForwardBackwardTask
    net = ScriptedRCNN(cls_pred, cls_targets, ctx)
    task = ForwardBackwardTask(
        net, None, gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False),
        gluon.loss.HuberLoss(), rcnn_cls_loss, gluon.loss.HuberLoss(), mix_ratio=1.0,
        amp_enabled=False)
    rng = np.random.RandomState(2)
    batch = [mx.nd.array(a, ctx=ctx) for a in (
        rng.randn(B, 3, 8, 8), rng.rand(B, 3, 6) * 4, rng.randint(-1, 2, (B, A)),
        rng.randn(B, A, 4), rng.rand(B, A, 4) > 0.5)]
    rcnn_ce_metric = task.forward_backward(batch)[2]
    return rcnn_ce_metric.asscalar(), net.cls_pred.grad(ctx).asnumpy()


@pytest.mark.parametrize("hybridize", [False, True])
def test_batch_normalization_is_the_exact_drop_in_for_forward_backward_task(hybridize):
    cls_pred, cls_targets = _rcnn_batch()
    gluon_value, gluon_grad = _run_task(gluon.loss.SoftmaxCrossEntropyLoss(), cls_pred,
                                        cls_targets)
    ours = WeightedSoftmaxCELoss(class_weight=np.ones(K + 1), ignore_label=-1,
                                 normalization="batch")
    if hybridize:
        ours.hybridize()
    value, grad = _run_task(ours, cls_pred, cls_targets)
    assert value == pytest.approx(gluon_value, rel=1e-6)
    np.testing.assert_allclose(grad, gluon_grad, rtol=1e-5, atol=1e-8)
    # and the metric is the mean CE over the sampled proposals
    assert value == pytest.approx(softmax_ce(cls_pred, cls_targets).mean(), rel=1e-5)


def test_valid_normalization_divides_twice_in_forward_backward_task():
    cls_pred, cls_targets = _rcnn_batch(1)
    gluon_value, gluon_grad = _run_task(gluon.loss.SoftmaxCrossEntropyLoss(), cls_pred,
                                        cls_targets)
    value, grad = _run_task(WeightedSoftmaxCELoss(normalization="valid"), cls_pred, cls_targets)
    extra = cls_targets.size / np.count_nonzero(cls_targets >= 0)
    assert extra > 1.1
    assert value == pytest.approx(gluon_value * extra, rel=1e-5)
    np.testing.assert_allclose(grad, gluon_grad * extra, rtol=1e-5, atol=1e-8)


def test_for_detection_weights_in_forward_backward_task(tmp_path):
    from gluoncv.data import VOCDetection
    objects = [[("cat", 0), ("dog", 0), ("dog", 0)], [("dog", 0), ("car", 0)], [("dog", 0)]]
    write_voc_detection(str(tmp_path), objects)

    class FourClassVOC(VOCDetection):
        CLASSES = ("car", "cat", "dog", "person")
    weights = class_weights.for_detection(FourClassVOC(root=str(tmp_path),
                                                       splits=[(2007, "trainval")]),
                                          method="inverse", background_weight=0.5)
    # dog (dataset class 2) is RCNN class 3; person never occurs and gets the largest weight
    counts = np.array([1, 1, 4, 0])
    np.testing.assert_allclose(weights, np.concatenate(
        [[0.5], class_weights.inverse_frequency(counts)]), rtol=1e-6)
    assert weights[4] == weights[1:].max()
    cls_pred, cls_targets = _rcnn_batch(2)
    loss = WeightedSoftmaxCELoss(class_weight=weights, ignore_label=-1, normalization="batch")
    loss.hybridize()
    value, _ = _run_task(loss, cls_pred, cls_targets)
    # the task's metric: sum of weighted CE over the sampled proposals / their number
    expected = softmax_ce(cls_pred, cls_targets, class_weight=weights, normalization="null")
    assert value == pytest.approx(expected.sum() / B / np.count_nonzero(cls_targets >= 0),
                                  rel=1e-5)


def test_forward_backward_task_in_gluoncv_parallel_threads():
    """GluonCV's ``Parallel`` with no serial warm-up: the loss's first calls are concurrent."""
    from gluoncv.utils.parallel import Parallel
    from gluoncv.model_zoo.rcnn.faster_rcnn.data_parallel import ForwardBackwardTask
    cls_pred, cls_targets = _rcnn_batch(3)
    expected = _run_task(gluon.loss.SoftmaxCrossEntropyLoss(), cls_pred, cls_targets)[0]
    for _ in range(5):
        loss = WeightedSoftmaxCELoss(normalization="batch")
        loss.hybridize()
        contexts = [mx.cpu(0), mx.cpu(1)]
        rng = np.random.RandomState(2)
        tasks = {}
        for ctx in contexts:
            net = ScriptedRCNN(cls_pred, cls_targets, ctx)
            tasks[ctx] = ForwardBackwardTask(
                net, None, gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False),
                gluon.loss.HuberLoss(), loss, gluon.loss.HuberLoss(), mix_ratio=1.0,
                amp_enabled=False)

        class PerContext:
            def forward_backward(self, x):
                return tasks[x[0].context].forward_backward(x)
        executor = Parallel(len(contexts), PerContext(), serial_init=False)
        for ctx in contexts:
            executor.put([mx.nd.array(a, ctx=ctx) for a in (
                rng.randn(B, 3, 8, 8), rng.rand(B, 3, 6) * 4, rng.randint(-1, 2, (B, A)),
                rng.randn(B, A, 4), rng.rand(B, A, 4) > 0.5)])
        for _ in contexts:
            assert executor.get()[2].asscalar() == pytest.approx(expected, rel=1e-6)
        del executor


# ---- (b) segmentation in DataParallelCriterion ---------------------------------------

@pytest.fixture(scope="module")
def voc_segmentation(tmp_path_factory):
    from gluoncv.data import VOCSegmentation
    root = str(tmp_path_factory.mktemp("voc"))
    write_voc_segmentation(root, random_masks(4, num_class=21, size=(12, 16), seed=5))
    return VOCSegmentation(root=root, split="train", mode="testval")


def _segmentation_outputs(dataset, seed=0):
    """GluonCV's own masks (255 turned into -1) and random main/aux logits."""
    labels = mx.nd.stack(*[dataset[i][1] for i in range(len(dataset))]).astype("float32")
    assert (labels.asnumpy() == -1).any() and not (labels.asnumpy() == 255).any()
    rng = np.random.RandomState(seed)
    shape = (labels.shape[0], 21) + labels.shape[1:]
    return rng.randn(*shape).astype(np.float32), rng.randn(*shape).astype(np.float32), labels


def _parallel_criterion(criterion, pred, aux_pred, labels, sync, contexts):
    from gluoncv.utils.parallel import DataParallelCriterion
    parts = len(contexts)
    inputs = [(mx.nd.array(p, ctx=c), mx.nd.array(a, ctx=c)) for p, a, c in zip(
        np.array_split(pred, parts), np.array_split(aux_pred, parts), contexts)]
    for pair in inputs:
        for x in pair:
            x.attach_grad()
    with mx.autograd.record():
        losses = DataParallelCriterion(criterion, contexts, sync=sync)(inputs, labels)
    mx.autograd.backward(list(losses))
    value = np.concatenate([loss.asnumpy() for loss in losses])
    grads = [np.concatenate([pair[k].grad.asnumpy() for pair in inputs]) for k in (0, 1)]
    return value, grads


@pytest.mark.parametrize("sync", [True, False])
def test_mix_loss_in_data_parallel_criterion(voc_segmentation, sync):
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss
    contexts = [mx.cpu(0), mx.cpu(1)]
    pred, aux_pred, labels = _segmentation_outputs(voc_segmentation)
    # unit weights: GluonCV's value in the same harness
    theirs = _parallel_criterion(MixSoftmaxCrossEntropyLoss(aux_weight=0.2), pred, aux_pred,
                                 labels, sync, contexts)[0]
    for trial in range(50):  # a fresh hybridized loss each time: concurrent first calls
        unit = MixWeightedSoftmaxCELoss(aux_weight=0.2)
        unit.hybridize()
        np.testing.assert_allclose(
            _parallel_criterion(unit, pred, aux_pred, labels, sync, contexts)[0], theirs,
            rtol=1e-5)
    # weights from the dataset's own masks: the float64 reference, per device
    weights = class_weights.for_segmentation(voc_segmentation, method="median")
    loss = MixWeightedSoftmaxCELoss(class_weight=weights, aux_weight=0.2)
    loss.hybridize()
    value, (main_grad, aux_grad) = _parallel_criterion(loss, pred, aux_pred, labels, sync,
                                                      contexts)
    y = labels.asnumpy()
    expected = softmax_ce(pred, y, weights, axis=1, normalization="batch") + 0.2 * softmax_ce(
        aux_pred, y, weights, axis=1, normalization="batch")
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    whole = _parallel_criterion(loss, pred, aux_pred, labels, sync, [mx.cpu(0)])
    np.testing.assert_allclose(main_grad, whole[1][0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(aux_grad, whole[1][1], rtol=1e-5, atol=1e-9)


# ---- (c) segmentation: docs/gluoncv.md's patch to scripts/segmentation/train.py --------

class TinySegmentationNet(gluon.HybridBlock):
    """Stands in for GluonCV's FCN with ``aux=True``: ``(main, aux)`` logits at the
    input's resolution, 21 classes."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.body = gluon.nn.Conv2D(8, 3, padding=1, in_channels=3, activation="relu")
            self.head = gluon.nn.Conv2D(21, 1, in_channels=8)
            self.aux_head = gluon.nn.Conv2D(21, 3, padding=1, in_channels=8)

    def hybrid_forward(self, F, x):
        features = self.body(x)
        return self.head(features), self.aux_head(features)


def _train_py_criterion(args, trainset, with_class_weights):
    """The criterion the patched ``Trainer.__init__`` builds: the docs' ``+`` lines, run."""
    with open(os.path.join(REPO, "docs", "gluoncv.md"), encoding="utf-8") as handle:
        text = handle.read()
    patch = text[text.index("+from gluon_losses import MixWeightedSoftmaxCELoss"):]
    patch = patch[:patch.index("```")]
    lines = [line[1:] for line in patch.splitlines() if line.startswith("+")]
    code = textwrap.dedent("\n".join(lines[1:]))
    if not with_class_weights:
        code = code.replace("class_weight=weights, ", "")
    scope = {"args": args, "trainset": trainset}
    exec(lines[0] + "\n" + code, scope)  # pylint: disable=exec-used
    return scope["criterion"]


def _train_py_steps(criterion, trainset, args, steps=2):
    """``Trainer.training`` of GluonCV's script: its DataParallel wrappers and calls."""
    from gluoncv.utils.parallel import DataParallelCriterion, DataParallelModel
    mx.random.seed(0)
    model = TinySegmentationNet()
    model.initialize(mx.init.Xavier(), ctx=args.ctx)
    net = DataParallelModel(model, args.ctx, args.syncbn)
    parallel_criterion = DataParallelCriterion(criterion, args.ctx, args.syncbn)
    trainer = gluon.Trainer(model.collect_params(), "sgd", {
        "learning_rate": 0.1, "wd": 1e-4, "momentum": 0.9})
    loader = gluon.data.DataLoader(trainset, batch_size=args.batch_size, shuffle=False,
                                   last_batch="rollover")
    logged = []
    for step, (data, target) in zip(range(steps), loader):
        with mx.autograd.record(True):
            outputs = net(data.astype("float32", copy=False))
            losses = parallel_criterion(outputs, target)
            mx.nd.waitall()
            mx.autograd.backward(losses)
        trainer.step(args.batch_size)
        logged.append(float(np.mean([loss.asnumpy()[0] for loss in losses])))
    return {name[len(model.prefix):]: p.data(args.ctx[0]).asnumpy() for name, p in
            model.collect_params().items()}, logged


def test_train_py_patch_trains_as_gluoncvs_own_loss(tmp_path):
    import types
    from gluoncv.data import VOCSegmentation
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss
    write_voc_segmentation(str(tmp_path), random_masks(4, num_class=21, size=(12, 16), seed=7))
    trainset = VOCSegmentation(root=str(tmp_path), split="train", mode="testval",
                               transform=mx.gluon.data.vision.transforms.ToTensor())
    args = types.SimpleNamespace(aux=True, aux_weight=0.2, batch_size=4,
                                 ctx=[mx.cpu(0), mx.cpu(1)], syncbn=False)
    theirs, their_log = _train_py_steps(
        MixSoftmaxCrossEntropyLoss(args.aux, aux_weight=args.aux_weight), trainset, args)
    ours, our_log = _train_py_steps(_train_py_criterion(args, trainset, False), trainset, args)
    start, _ = _train_py_steps(MixSoftmaxCrossEntropyLoss(True), trainset, args, steps=0)
    for name in theirs:
        assert np.abs(theirs[name] - start[name]).max() > 1e-4, name  # training moved it
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    assert all(np.isfinite(our_log)) and our_log != their_log  # logged differently
    weighted, weighted_log = _train_py_steps(_train_py_criterion(args, trainset, True),
                                             trainset, args)
    assert all(np.isfinite(weighted_log))
    assert any(np.abs(weighted[name] - ours[name]).max() > 1e-6 for name in ours)
