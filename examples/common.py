"""Plumbing shared by the training scripts: contexts, seeds, atomic checkpoints, logs."""
import json
import logging
import os
import random
import sys
import tempfile

import numpy as np
import mxnet as mx


def parse_contexts(ctx="cpu", gpus=""):
    """``--gpus 0,1`` wins over ``--ctx``; ``--ctx cpu:0,cpu:1`` gives several CPU contexts."""
    if gpus:
        return [mx.gpu(int(i)) for i in str(gpus).split(",") if i.strip()]
    contexts = []
    for item in str(ctx).split(","):
        kind, _, index = item.strip().partition(":")
        if kind not in ("cpu", "gpu"):
            raise ValueError("--ctx entries must look like cpu, cpu:1 or gpu:0, got %r" % item)
        contexts.append(getattr(mx, kind)(int(index or 0)))
    return contexts


def set_seed(seed):
    """Seed Python, NumPy and MXNet so that two runs with one seed give one result."""
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


WEIGHTINGS = ("none", "inverse", "median", "effective")


def class_weight_vector(weighting, counts, beta=0.999):
    """``--class-weighting`` by name: float32 per-class weights from ``counts``, or None.

    ``weighting`` is ``'none'`` (None: unweighted), ``'inverse'``, ``'median'`` or
    ``'effective'`` (``beta`` is the effective-number beta), the estimators of
    ``gluon_losses.class_weights``.
    """
    from gluon_losses import class_weights as cw
    if weighting == "none":
        return None
    if weighting == "inverse":
        weights = cw.inverse_frequency(counts)
    elif weighting == "median":
        weights = cw.median_frequency(counts)
    elif weighting == "effective":
        weights = cw.effective_number(counts, beta=beta)
    else:
        raise ValueError("class weighting must be one of %s, got %r"
                         % (", ".join(WEIGHTINGS), weighting))
    return np.asarray(weights, dtype=np.float32)


def atomic_write(path, write):
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    A run killed mid-write leaves the previous file intact instead of a torn one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True)
    atomic_write(path, write)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def save_checkpoint(directory, epoch, blocks, trainers, meta=None):
    """Save ``{name: block}`` parameters and ``{name: trainer}`` states for ``epoch``.

    The small ``checkpoint.json`` naming the epoch is written last, so a checkpoint is
    only ever visible once every file it points to is complete.
    """
    files = {}
    for name, block in blocks.items():
        fname = "%s-%04d.params" % (name, epoch)
        atomic_write(os.path.join(directory, fname), block.save_parameters)
        files[name] = fname
    for name, trainer in trainers.items():
        fname = "%s-%04d.states" % (name, epoch)
        atomic_write(os.path.join(directory, fname), trainer.save_states)
        files[name] = fname
    record = {"epoch": epoch, "files": files}
    record.update(meta or {})
    write_json(os.path.join(directory, "checkpoint.json"), record)


def load_checkpoint(directory, blocks, trainers, ctx):
    """Restore what :func:`save_checkpoint` wrote; returns its record (``epoch`` etc.)."""
    path = os.path.join(directory, "checkpoint.json")
    if not os.path.exists(path):
        raise FileNotFoundError("--resume %s: no checkpoint.json there" % directory)
    record = read_json(path)
    for name, block in blocks.items():
        block.load_parameters(os.path.join(directory, record["files"][name]), ctx=ctx)
    for name, trainer in trainers.items():
        trainer.load_states(os.path.join(directory, record["files"][name]))
    return record


class TqdmHandler(logging.StreamHandler):
    """Console log lines printed through tqdm, so they do not tear the progress bars."""

    def emit(self, record):
        from tqdm import tqdm
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:                                           # pragma: no cover
            self.handleError(record)


def get_logger(out_dir, quiet=False, name="train"):
    """A logger writing to ``out_dir/train.log`` and, unless ``quiet``, to the console
    (through tqdm, since both training scripts show progress bars)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers = []
    os.makedirs(out_dir, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(message)s")
    handlers = [logging.FileHandler(os.path.join(out_dir, "train.log"))]
    if not quiet:
        handlers.append(TqdmHandler())
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False
    return logger
