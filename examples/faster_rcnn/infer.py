"""Run an exported Faster R-CNN (from examples/faster_rcnn) on an image and draw boxes.

    python -m examples.faster_rcnn.infer runs/detect/export/faster_rcnn IMAGE.png --out boxes.png

``PREFIX`` is the export prefix: ``PREFIX-symbol.json``, ``PREFIX-0000.params`` and
``PREFIX-meta.json`` (classes, input size, normalization) must exist. Only MXNet and
GluonCV's image helpers are needed; the training code is not imported.
"""
import argparse
import json
import os
import sys

import numpy as np
import mxnet as mx


def load_detector(prefix, ctx=mx.cpu()):
    """``(SymbolBlock, meta)`` from an export prefix."""
    with open(prefix + "-meta.json") as handle:
        meta = json.load(handle)
    folder = os.path.dirname(prefix)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
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


def draw(image, detections, path):
    """Save ``image`` with ``detections`` drawn on it (matplotlib, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = image.asnumpy() if isinstance(image, mx.nd.NDArray) else np.asarray(image)
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(w / 50.0, h / 50.0), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(img)
    ax.axis("off")
    colors = plt.get_cmap("tab10")
    names = sorted({d[0] for d in detections})
    for name, score, (x1, y1, x2, y2) in detections:
        color = colors(names.index(name) % 10)
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                   linewidth=1.5))
        ax.text(x1, max(y1 - 2, 6), "%s %.2f" % (name, score), color="white", fontsize=6,
                bbox=dict(facecolor=color, alpha=0.7, pad=0.5, edgecolor="none"))
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prefix", help="export prefix, e.g. runs/detect/export/faster_rcnn")
    p.add_argument("image", help="an image file (any format mx.image.imread reads)")
    p.add_argument("--out", default=None, help="output image (default IMAGE-boxes.png)")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score to draw")
    p.add_argument("--gpu", type=int, default=None, help="GPU id (default CPU)")
    args = p.parse_args(argv)
    ctx = mx.gpu(args.gpu) if args.gpu is not None else mx.cpu()
    net, meta = load_detector(args.prefix, ctx)
    image = mx.image.imread(args.image)
    found = detect(net, meta, image, args.threshold, ctx)
    out = args.out or os.path.splitext(args.image)[0] + "-boxes.png"
    draw(image, found, out)
    for name, score, box in found:
        print("%-10s %.3f  [%s]" % (name, score, ", ".join("%.1f" % v for v in box)))
    print("%d detection(s) >= %.2f drawn on %s" % (len(found), args.threshold, out),
          file=sys.stderr)
    return found


if __name__ == "__main__":
    main()
