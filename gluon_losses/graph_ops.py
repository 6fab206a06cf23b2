"""Graph operations shared by the losses, for ``F = mx.nd`` and ``F = mx.sym`` alike.

Inside a hybridized graph nothing can raise, so a bad label turns the loss NaN
(:func:`poison_invalid` for CenterLoss; the softmax loss gets the same effect from a
NaN-guarded weight lookup), which the first logged loss value shows.
"""
from .mxnet_internals import SETUP_LOCK

# Inside float32's range with room to spare: clip's bounds go through a double, and at
# exactly float32's largest value MXNet 1.9's clip lets inf through.
CLIP_MAX = 3.4e38


def detached_label(F, label):
    """``label`` cut from autograd.

    Labels often come out of a recorded graph (GluonCV's target generator), and the
    ops that read them as indices (pick, take, Embedding) refuse to be asked for an
    index gradient ("wrong req", "Embedding layer doesn't support calculate data
    gradient"). Labels never need one.
    """
    return F.BlockGrad(label)


def poison_invalid(F, loss, invalid):
    """``loss`` plus NaN wherever ``invalid`` (a mask, or a count that broadcasts) is positive.

    This is the graph-mode stand-in for raising: sqrt of a negative number is NaN and
    sqrt(0) is 0, so one cheap op marks the loss without a branch. BlockGrad keeps
    the infinite derivative of sqrt at 0 out of the backward pass.
    """
    return F.broadcast_add(loss, F.BlockGrad(F.sqrt(-invalid)))


def apply_scalar_weight(F, loss, weight):
    """Multiply by the loss's global ``weight`` unless it is 1 (saves a graph node).

    ``weight=0`` gives exact zeros and a zero gradient even where ``loss`` is inf (whose
    product with 0 is NaN): the loss is bounded inside float32's range first. A NaN (a
    bad label) stays NaN. The zeros stay connected to ``loss``: an unconnected
    ``zeros_like`` crashes MXNet's imperative backward.
    """
    if weight == 0:
        return F.clip(loss, -CLIP_MAX, CLIP_MAX) * 0.0
    return loss if weight == 1.0 else loss * weight


def ensure_on_context(param, ctx):
    """Copy a non-trainable parameter onto ``ctx`` the first time an input arrives there.

    Losses are used without ``initialize()``, on whatever context the data is on, so
    their constant parameters follow the data instead of failing on an unseen context.
    """
    if ctx not in param.list_ctx():
        # Threads that reach new contexts together would each re-create the list and
        # drop the others' context; contexts are appended, so readers' indices hold.
        with SETUP_LOCK:
            contexts = param.list_ctx()
            if ctx not in contexts:
                param.reset_ctx(contexts + [ctx])
