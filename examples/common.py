"""Plumbing shared by the training scripts: contexts, seeds, atomic checkpoints, logs."""
import json
import logging
import os
import random
import sys
import uuid

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


TMP_PREFIX = ".tmp-"


def atomic_write(path, write):
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    A run killed mid-write leaves the previous file intact instead of a torn one; the
    temporary file it leaves behind is removed by :func:`remove_stale_temporaries`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # The name carries the writer's process id, so a later run can tell a dead
    # writer's leftover from a write in progress. Created as open() creates files
    # (0666 less the umask; mkstemp would give 0600), so every file of a run gets the
    # same permissions.
    tmp = os.path.join(directory, "%s%s.%d.%s" % (TMP_PREFIX, os.path.basename(path),
                                                  os.getpid(), uuid.uuid4().hex[:8]))
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def remove_stale_temporaries(directory):
    """Remove the temporary files of :func:`atomic_write` whose writer is gone.

    A file whose name carries the id of a live process on this machine (a write in
    progress) is kept; any other ``.tmp-*`` file, including the unnamed ones older
    versions left, is removed. Returns the names removed.
    """
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith(TMP_PREFIX):
            continue
        pid = name.rsplit(".", 2)[-2] if name.count(".") >= 3 else ""
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


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
    only ever visible once every file it points to is complete. Temporary files left
    by a run killed mid-write are removed first.
    """
    remove_stale_temporaries(directory)
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
    remove_stale_temporaries(directory)
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
