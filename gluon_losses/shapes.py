"""The shape rules of the softmax loss: which label and sample weight fit a ``pred``,
and how a sample weight lies along the label (the one sample-weight broadcasting rule).

Pure functions of shapes and settings; :class:`gluon_losses.WeightedSoftmaxCELoss` calls
:func:`shape_plan` before either path runs, so both get the same reshaped arrays.
"""
import functools

from .checks import check_not_empty, check_shape

__all__ = ["shape_plan", "sample_weight_shape"]


@functools.lru_cache(maxsize=256)
def shape_plan(pred_shape, label_shape, weight_shape, axis, batch_axis, sparse_label,
               num_classes):
    """Every check that depends on the input shapes alone, raising on a mismatch:
    ``(ndim, C, label reshape, sample_weight reshape)``, a reshape None where none is
    needed. The arguments are the loss's settings (``num_classes`` None without class
    weights); a plan is worked out once per combination, as each shape read is a call
    into MXNet and the checks cost as much as a small loss."""
    ndim = len(pred_shape)
    if ndim < 2:
        raise ValueError("pred must have a batch axis and a class axis, got shape %s"
                         % (pred_shape,))
    check_not_empty("pred", pred_shape)
    if not -ndim <= axis < ndim:
        raise ValueError("axis=%d is out of range for pred of shape %s" % (axis, pred_shape))
    class_axis = axis % ndim
    class_count = pred_shape[class_axis]
    if num_classes is not None and class_count != num_classes:
        raise ValueError("pred has %d classes along axis %d (shape %s) but class_weight has "
                         "length %d%s" % (class_count, axis, pred_shape,
                                          num_classes,
                                          _layout_hint(pred_shape, num_classes)))
    position_shape = pred_shape[:class_axis] + pred_shape[class_axis + 1:]
    kept_axis_shape = pred_shape[:class_axis] + (1,) + pred_shape[class_axis + 1:]
    if not -len(position_shape) <= batch_axis < len(position_shape):
        raise ValueError("batch_axis=%d is out of range for the label's %d dimension(s) "
                         "(pred of shape %s without class axis %d)"
                         % (batch_axis, len(position_shape), pred_shape, axis))
    label_reshape = None
    if sparse_label:
        if label_shape != position_shape and label_shape == kept_axis_shape:
            label_reshape = label_shape = position_shape
        check_shape("label", label_shape, position_shape, "pred of shape %s" % (pred_shape,))
    else:
        check_shape("label", label_shape, pred_shape, "pred (sparse_label=False)")
    weight_reshape = None
    if weight_shape is not None:
        weight_reshape = sample_weight_shape(weight_shape, position_shape, kept_axis_shape,
                                             class_axis, batch_axis)
    return ndim, class_count, label_reshape, weight_reshape


def sample_weight_shape(shape, position_shape, kept_axis_shape, axis, batch_axis):
    """The shape that gives ``sample_weight`` the label's number of dimensions, or None
    where it has that already.

    Three readings are accepted: a shape with the label's number of dimensions that
    broadcasts to it; ``(batch,)``, one weight per sample; and gluon's, a shape that
    broadcasts (NumPy-style, aligned on the right) to ``pred``'s shape with the class
    axis kept as 1, such as ``(B, 1, 1, 1)`` for NCHW scores. A shape that two
    readings place differently (``(4, 1)`` for labels ``(4, 4)``: per sample, or
    gluon's per position) is refused, never decided by which sizes happen to match.
    """
    readings = {}
    if _broadcasts(shape, position_shape, same_ndim=True):
        readings["with the label's dimensions"] = tuple(shape)
    if len(position_shape) > 1 and shape == (position_shape[batch_axis],):
        spec = [1] * len(position_shape)
        spec[batch_axis] = shape[0]
        readings["one weight per sample"] = tuple(spec)
    if _broadcasts(shape, kept_axis_shape, same_ndim=False):
        full = (1,) * (len(kept_axis_shape) - len(shape)) + tuple(shape)
        readings["aligned on the right with pred (gluon's rule)"] = full[:axis] + full[axis + 1:]
    placements = set(readings.values())
    if not placements:
        raise ValueError("sample_weight has shape %s, which does not broadcast to the "
                         "label's shape %s" % (shape, position_shape))
    if len(placements) > 1:
        raise ValueError(
            "sample_weight has shape %s, which is ambiguous for labels of shape %s: %s; "
            "give it pred's number of dimensions with 1 along the class axis, which "
            "reads one way only" % (shape, position_shape, "; ".join(
                "%s it lies as %s (pass %s)" % (how, placed, placed[:axis] + (1,) + placed[axis:])
                for how, placed in readings.items())))
    placed, = placements
    return None if placed == tuple(shape) else placed


def _broadcasts(shape, target, same_ndim):
    """Whether ``shape`` broadcasts to ``target`` (aligned on the right)."""
    if len(shape) > len(target) or (same_ndim and len(shape) != len(target)):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def _layout_hint(pred_shape, num_classes):
    """Where the classes seem to lie when they are not along ``axis``, as a message tail."""
    ndim = len(pred_shape)
    axes = [a for a in range(ndim) if pred_shape[a] == num_classes]
    if not axes:
        return ""
    others = {2: ["N"], 3: ["B", "N"], 4: ["B", "H", "W"], 5: ["B", "D", "H", "W"]}.get(
        ndim, ["d%d" % a for a in range(ndim - 1)])
    axis = axes[-1]
    layout = list(others)
    layout.insert(axis, "C")
    return ("; pred looks laid out as (%s), with the classes along axis %d: pass axis=%d"
            % (", ".join(layout), axis, -1 if axis == ndim - 1 else axis))
