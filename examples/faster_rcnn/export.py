"""Export a trained detector as an inference graph (``-symbol.json`` / ``-0000.params``)
plus ``-meta.json`` holding what inference needs besides the graph."""
import os
import warnings

import mxnet as mx

from examples.common import write_json

# GluonCV's FasterRCNNDefaultValTransform normalization, which training and evaluation use
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def export_detector(net, out_dir, ctx, classes):
    """``net.export()`` the inference graph under ``out_dir/export/``.

    Returns the prefix ``out_dir/export/faster_rcnn``; ``infer.load_detector`` reads it.
    """
    prefix = os.path.join(out_dir, "export", "faster_rcnn")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    net.hybridize()  # a fresh trace, in inference mode
    with warnings.catch_warnings():  # the training-only box encoder is unused here, rightly
        warnings.simplefilter("ignore", UserWarning)
        net(mx.nd.zeros((1, 3, net.short, net.short), ctx=ctx[0]))
    net.export(prefix, epoch=0)
    write_json(prefix + "-meta.json", {
        "classes": list(classes), "short": int(net.short), "max_size": int(net.max_size),
        "mean": list(MEAN), "std": list(STD),
        "symbol": os.path.basename(prefix) + "-symbol.json",
        "params": os.path.basename(prefix) + "-0000.params",
        "outputs": ["ids", "scores", "bboxes"]})
    return prefix
