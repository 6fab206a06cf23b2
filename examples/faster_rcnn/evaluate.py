"""VOC07 11-point average precision of a detector on a detection dataset."""
import warnings

import mxnet as mx
from mxnet import gluon


def evaluate(net, dataset, ctx, classes, hybridize=False):
    """AP per class at IoU 0.5 and their mean, with GluonCV's ``VOC07MApMetric``.

    Parameters
    ----------
    net : gluoncv FasterRCNN
    dataset : detection dataset of ``(image HWC uint8, label (n, 5 or 6))``
        A sixth label column marks difficult objects (VOC), which do not count.
    ctx : list of Context
        Images go to the contexts in turn.
    classes : list of str
    hybridize : bool
        Re-trace the network in inference mode first.

    Returns
    -------
    dict ``{class name: AP, ..., 'mAP': mean}``; a class absent from ``dataset`` gets NaN.
    """
    from gluoncv.data.batchify import Append, Tuple
    from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultValTransform
    from gluoncv.utils.metrics.voc_detection import VOC07MApMetric
    metric = VOC07MApMetric(iou_thresh=0.5, class_names=list(classes))
    loader = gluon.data.DataLoader(
        dataset.transform(FasterRCNNDefaultValTransform(net.short, net.max_size)),
        batch_size=len(ctx), shuffle=False, batchify_fn=Tuple(*[Append() for _ in range(3)]),
        last_batch="keep")
    if hybridize:
        net.hybridize(static_alloc=True)  # re-trace in inference mode
    for batch in loader:
        det_boxes, det_ids, det_scores, gt_boxes, gt_ids, gt_difficult = [], [], [], [], [], []
        for x, y, im_scale in zip(*batch):
            c = ctx[len(det_ids) % len(ctx)]
            with warnings.catch_warnings():  # unused training-only box encoder: expected
                warnings.simplefilter("ignore", UserWarning)
                ids, scores, boxes = net(x.as_in_context(c))
            scale = float(im_scale.reshape(-1).asscalar())
            h, w = x.shape[2], x.shape[3]
            boxes = mx.nd.concat(boxes.slice_axis(-1, 0, 1).clip(0, w),
                                 boxes.slice_axis(-1, 1, 2).clip(0, h),
                                 boxes.slice_axis(-1, 2, 3).clip(0, w),
                                 boxes.slice_axis(-1, 3, 4).clip(0, h), dim=-1)
            det_ids.append(ids)
            det_scores.append(scores)
            det_boxes.append(boxes * scale)
            gt_ids.append(y.slice_axis(axis=-1, begin=4, end=5))
            gt_boxes.append(y.slice_axis(axis=-1, begin=0, end=4) * scale)
            gt_difficult.append(y.slice_axis(axis=-1, begin=5, end=6) if y.shape[-1] > 5 else None)
        for record in zip(det_boxes, det_ids, det_scores, gt_boxes, gt_ids, gt_difficult):
            metric.update(*record)  # one image at a time: object counts differ
    names, values = metric.get()
    return {n: float(v) for n, v in zip(names, values)}
