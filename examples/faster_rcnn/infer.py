"""Run an exported Faster R-CNN (from examples/faster_rcnn) on an image and draw boxes.

    python -m examples.faster_rcnn.infer runs/detect/export/faster_rcnn IMAGE.png --out boxes.png

``PREFIX`` is the export prefix: ``PREFIX-symbol.json``, ``PREFIX-0000.params`` and
``PREFIX-meta.json`` (classes, input size, normalization) must exist. Only MXNet and
GluonCV's image helpers are needed; the training code is not imported.
"""
import json
import os
import warnings

import numpy as np
import mxnet as mx

from examples import common


def load_detector(prefix, ctx=mx.cpu()):
    """``(SymbolBlock, meta)`` from an export prefix."""
    with open(prefix + "-meta.json") as handle:
        meta = json.load(handle)
    folder = os.path.dirname(prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mx.gluon.SymbolBlock.imports(os.path.join(folder, meta["symbol"]), ["data"],
                                           os.path.join(folder, meta["params"]), ctx=ctx)
    return net, meta


def preprocess(image, meta):
    """HWC uint8 RGB NDArray -> ((1, 3, h, w) float32 input, resized HWC uint8 image)."""
    from gluoncv.data.transforms import image as timage
    resized = timage.resize_short_within(image, meta["short"], meta["max_size"], interp=1)
    x = mx.nd.image.to_tensor(resized)
    x = mx.nd.image.normalize(x, mean=meta["mean"], std=meta["std"])
    return x.expand_dims(0), resized


def detect(net, meta, image, threshold=0.5, ctx=mx.cpu()):
    """Detections on ``image`` (HWC uint8 RGB NDArray) in its own pixel coordinates.

    Returns a list of ``(class_name, score, [xmin, ymin, xmax, ymax])``, best first.
    """
    x, resized = preprocess(image, meta)
    ids, scores, boxes = net(x.as_in_context(ctx))
    scale = image.shape[0] / float(resized.shape[0])
    ids, scores, boxes = ids[0].asnumpy().ravel(), scores[0].asnumpy().ravel(), boxes[0].asnumpy()
    found = []
    for i in np.argsort(-scores):
        if ids[i] < 0 or scores[i] < threshold:
            continue
        found.append((meta["classes"][int(ids[i])], float(scores[i]),
                      [float(v) * scale for v in boxes[i]]))
    return found


def draw(image, detections, classes, path):
    """Save ``image`` with ``detections`` (from :func:`detect`) drawn on it, one colour
    per class of ``classes``, with GluonCV's ``plot_bbox`` (no display needed)."""
    plt = common.pyplot()
    from gluoncv.utils.viz import plot_bbox
    img = image.asnumpy() if isinstance(image, mx.nd.NDArray) else np.asarray(image)
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(w / 50.0, h / 50.0), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ids = np.array([classes.index(name) for name, _, _ in detections], dtype=np.float32)
    scores = np.array([score for _, score, _ in detections], dtype=np.float32)
    boxes = np.array([box for _, _, box in detections], dtype=np.float32).reshape(-1, 4)
    colors = {i: plt.get_cmap("tab10")(i % 10) for i in range(len(classes))}
    plot_bbox(img, boxes, scores, ids, thresh=0.0, class_names=list(classes), colors=colors,
              ax=ax, linewidth=1.5, fontsize=6)
    ax.axis("off")
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    from examples.faster_rcnn.cli import infer_main
    infer_main()
