"""What every example uses: the shared flags, resume rule, contexts, seeds, checkpoints, logs.

Conventions (every example follows them):

* :func:`add_common_arguments` adds the shared flags, same names and meanings in every
  example; an example passes its own defaults (``add_common_arguments(p, lr=0.003)``).
* :func:`parse_args` parses the command line. With ``--resume DIR`` every flag not given
  comes from ``DIR/args.json``, and a changed *experiment* flag (anything not listed as
  runtime) is refused: resuming continues one experiment, it does not start another.
* A run folder ``OUT`` holds ``args.json``, ``train.log``, ``results.json`` and
  ``checkpoints/`` (only the newest epoch is kept there). Epochs are numbered from 1.
* Console lines go through tqdm while a progress bar is shown: wrap the training loop in
  ``with console_through_tqdm(log):``.
"""
import argparse
import contextlib
import json
import logging
import os
import re
import sys
import uuid

import numpy as np
import mxnet as mx

from gluon_losses import class_weights, fused

CHECKPOINTS = "checkpoints"          # OUT/checkpoints/
RESULTS = "results.json"             # OUT/results.json
ARGS = "args.json"                   # OUT/args.json: the configuration of the run
WEIGHTINGS = class_weights.METHODS     # --class-weighting choices

COMMON_DEFAULTS = dict(
    out=None, resume=None, epochs=10, batch_size=32, optimizer="sgd", lr=0.01, momentum=0.9,
    wd=0.0, lr_decay=0.1, lr_decay_epochs="", seed=0, ctx="cpu", gpus="", kvstore="device",
    hybridize=True, class_weighting="none", beta=0.999, max_iters=0, quiet=False,
)
# Flags that change where a run goes or how it is watched, not what it computes; a
# resumed run may change them. Examples add their own (e.g. a data folder).
RUNTIME_FLAGS = ("out", "resume", "epochs", "ctx", "gpus", "kvstore", "hybridize",
                 "max_iters", "quiet")


# --------------------------------------------------------------------------- flags
def add_common_arguments(parser, **defaults):
    """Add the flags every example shares to ``parser``; returns their argument group.

    ``defaults`` overrides :data:`COMMON_DEFAULTS` by destination name (``batch_size=64``,
    ``lr_decay_epochs="16,21"``); an unknown name raises ValueError.
    """
    unknown = sorted(set(defaults) - set(COMMON_DEFAULTS))
    if unknown:
        raise ValueError("add_common_arguments: unknown defaults %s" % unknown)
    d = dict(COMMON_DEFAULTS, **defaults)

    def shown(key):        # a default of None is resolved by the example (see its --help)
        return "" if d[key] is None else " (default %s)" % (d[key],)

    g = parser.add_argument_group("shared by every example")
    g.add_argument("--out", metavar="DIR", default=d["out"],
                   help="run folder: args.json, train.log, results.json, checkpoints/ "
                        "(default %s)" % (d["out"] or "runs/<example>-<time>"))
    g.add_argument("--resume", metavar="DIR", default=d["resume"],
                   help="continue the run in DIR from its last checkpoint; flags not given "
                        "come from DIR/args.json, changed experiment flags are refused")
    g.add_argument("--epochs", type=int, default=d["epochs"],
                   help="total epochs, counted from 1" + shown("epochs"))
    g.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="samples per training step" + shown("batch_size"))
    g.add_argument("--optimizer", default=d["optimizer"],
                   help="any mxnet optimizer name" + shown("optimizer"))
    g.add_argument("--lr", type=float, default=d["lr"],
                   help="learning rate" + shown("lr"))
    g.add_argument("--momentum", type=float, default=d["momentum"],
                   help="sgd/nag momentum" + shown("momentum"))
    g.add_argument("--wd", type=float, default=d["wd"], help="weight decay" + shown("wd"))
    g.add_argument("--lr-decay", type=float, default=d["lr_decay"],
                   help="factor applied to lr after each of --lr-decay-epochs"
                        + shown("lr_decay"))
    g.add_argument("--lr-decay-epochs", default=d["lr_decay_epochs"], metavar="E1,E2",
                   help="epochs after which lr is multiplied by --lr-decay"
                        + shown("lr_decay_epochs"))
    g.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds initialisation and batch order" + shown("seed"))
    g.add_argument("--ctx", default=d["ctx"],
                   help="cpu, gpu:0, or a list such as cpu:0,cpu:1" + shown("ctx"))
    g.add_argument("--gpus", default=d["gpus"], help="e.g. 0,1; wins over --ctx")
    g.add_argument("--kvstore", default=d["kvstore"],
                   help="device | local | dist_sync" + shown("kvstore"))
    g.add_argument("--hybridize", action=argparse.BooleanOptionalAction,
                   default=d["hybridize"], help="hybridize networks and losses")
    g.add_argument("--class-weighting", choices=WEIGHTINGS, default=d["class_weighting"],
                   help="per-class weights of the softmax loss, from "
                        "gluon_losses.class_weights" + shown("class_weighting"))
    g.add_argument("--beta", type=float, default=d["beta"],
                   help="beta of --class-weighting effective" + shown("beta"))
    g.add_argument("--max-iters", type=int, default=d["max_iters"], metavar="N",
                   help="stop each epoch after N iterations, 0 = no cap (smoke tests)")
    g.add_argument("--quiet", action="store_true", default=d["quiet"],
                   help="no console lines and no progress bars; train.log keeps everything")
    return g


_UNSET = object()


def check_resume(settings, runtime=RUNTIME_FLAGS):
    """For a run started from code with ``resume=DIR`` (the command line's
    :func:`parse_args` checks its own): refuse experiment settings that differ from
    ``DIR/args.json``, as :func:`merge_resumed` does."""
    if settings.get("resume"):
        saved = read_json(os.path.join(settings["resume"], ARGS))
        merge_resumed(settings, settings, saved, runtime)


def parse_args(parser, argv=None, runtime=RUNTIME_FLAGS):
    """Parse ``argv``; with ``--resume DIR`` apply the resume rule (see :func:`merge_resumed`).

    Returns an ``argparse.Namespace``. A refused resume exits through ``parser.error``.
    """
    full = vars(parser.parse_args(argv))
    # A namespace that already holds an attribute keeps it instead of the default, so
    # this second parse tells which flags were given on the command line.
    marked = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(full, _UNSET)))
    given = {k: v for k, v in vars(marked).items() if v is not _UNSET}
    if not full.get("resume"):
        return argparse.Namespace(**full)
    saved_path = os.path.join(full["resume"], ARGS)
    if not os.path.exists(saved_path):
        parser.error("--resume %s: no %s there (not a run folder)" % (full["resume"], ARGS))
    # argparse keeps no public map from destination to flag; _actions is stable since 3.2
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    try:
        merged = merge_resumed(full, given, read_json(saved_path), runtime, flags)
    except ValueError as err:
        parser.error(str(err))
    return argparse.Namespace(**merged)


def merge_resumed(defaults, given, saved, runtime=RUNTIME_FLAGS, flags=None):
    """The configuration of a resumed run: ``defaults`` < ``saved`` < ``given``.

    ``given`` holds only the values set on the command line, ``saved`` the resumed run's
    ``args.json``. Raises ValueError naming every experiment setting (one not in
    ``runtime``) whose given value differs from the saved one (by its flag in ``flags``,
    ``{destination: "--flag"}``). ``out`` defaults to the resumed folder.
    """
    flags = flags or {}
    changed = sorted(k for k, v in given.items()
                     if k not in runtime and k in saved and saved[k] != v)
    if changed:
        raise ValueError(
            "--resume continues the experiment saved in %s; these settings differ from it: "
            "%s (start a new run with --out to change them)" % (
                given.get("resume", defaults.get("resume")),
                ", ".join("%s %s (saved: %s)" % (flags.get(k, k), given[k], saved[k])
                          for k in changed)))
    merged = dict(defaults)
    merged.update({k: v for k, v in saved.items() if k in defaults})
    merged.update(given)
    if "out" not in given:
        merged["out"] = merged["resume"]
    return merged


def comma_list(cast=str):
    """An argparse ``type`` (any callable on text): ``"a, b"`` -> ``[cast("a"), cast("b")]``,
    blanks skipped; its name is what argparse shows for a bad value."""
    def parse(text):
        return [cast(item.strip()) for item in str(text).split(",") if item.strip()]
    parse.__name__ = "comma-separated %s list" % cast.__name__
    return parse


int_list = comma_list(int)  # "16,21" -> [16, 21]; empty -> []


# --------------------------------------------------------------------------- setup
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
    """Seed Python's ``random``, NumPy and MXNet (``gluoncv.utils.random.seed``)."""
    from gluoncv.utils.random import seed as seed_all
    seed_all(seed)


def lr_scheduler(lr, decay, decay_epochs, iters_per_epoch, warmup_iters=0):
    """``mx.lr_scheduler.MultiFactorScheduler`` multiplying ``lr`` by ``decay`` after each
    epoch in ``decay_epochs`` (numbered from 1), after a linear warm-up from 0 over the
    first ``warmup_iters`` updates; None when there is neither.

    The scheduler is part of the optimizer, which ``Trainer.save_states`` pickles, so a
    resumed run continues the schedule exactly.
    """
    epochs = int_list(decay_epochs) if isinstance(decay_epochs, str) else list(decay_epochs)
    if not epochs and not warmup_iters:
        return None
    if sorted(set(epochs)) != epochs or (epochs and epochs[0] < 1):
        raise ValueError("lr decay epochs must increase and be >= 1, got %r" % (decay_epochs,))
    # MultiFactorScheduler needs a step: without decay epochs, one by a factor of 1
    return mx.lr_scheduler.MultiFactorScheduler(
        step=[e * iters_per_epoch for e in epochs] or [1], factor=decay if epochs else 1.0,
        base_lr=lr, warmup_steps=warmup_iters, warmup_begin_lr=0.0)


def optimizer_params(optimizer, lr, wd, momentum, lr_decay, lr_decay_epochs, iters_per_epoch,
                     warmup_iters=0, clip_gradient=0.0):
    """The ``optimizer_params`` of a ``gluon.Trainer`` for the shared optimisation flags:
    ``--momentum`` goes to the optimizers that take one (sgd, nag), the schedule is
    :func:`lr_scheduler`'s, and ``clip_gradient`` is passed when positive."""
    params = {"learning_rate": lr, "wd": wd,
              "lr_scheduler": lr_scheduler(lr, lr_decay, lr_decay_epochs, iters_per_epoch,
                                           warmup_iters)}
    if optimizer in ("sgd", "nag"):
        params["momentum"] = momentum
    if clip_gradient > 0:
        params["clip_gradient"] = clip_gradient
    return params


def shuffled_batches(n, batch_size, seed, index, drop_last=False):
    """Index batches of ``n`` samples in an order that depends only on ``seed`` and the
    epoch ``index``, so a resumed run sees the batches a straight one would;
    ``drop_last`` leaves out a last, smaller batch."""
    order = np.random.RandomState([seed, index]).permutation(n)
    end = n - batch_size + 1 if drop_last else n
    return [order[i:i + batch_size] for i in range(0, end, batch_size)]


def class_weight_vector(kind, counts, beta=0.999):
    """Per-class weights (float32) by ``--class-weighting`` ``kind``, or None for ``none``."""
    return None if kind == "none" else class_weights.from_counts(kind, counts, beta=beta)


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (runs have no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def stall_watchdog(distributed, timeout, what, out):
    """The started :class:`gluon_losses.distributed.StallWatchdog` of a run's
    ``--stall-timeout``: it ends a ``distributed`` run whose training makes no progress
    for ``timeout`` seconds (0: never), saying to relaunch with ``--resume out``, and
    watches the kvstore's shutdown at exit. Outside a distributed run it watches nothing."""
    from gluon_losses.distributed import StallWatchdog
    return StallWatchdog(timeout if distributed and timeout else None, what=what,
                         resume="relaunch every process with --resume %s (flags as before)"
                         % out, watch_exit=True).start()


# --------------------------------------------------------------------------- files
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


def write_results(out, results):
    """Add which softmax CE implementation ran to ``results`` (``softmax_ce_paths``: the
    fused operator and the graph round differently) and write it to ``OUT/results.json``."""
    results["softmax_ce_paths"] = fused.paths_taken()
    write_json(os.path.join(out, RESULTS), results)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def save_checkpoint(directory, epoch, blocks, trainers, meta=None):
    """Save ``{name: block}`` parameters and ``{name: trainer}`` states for ``epoch``.

    The small ``checkpoint.json`` naming the epoch is written last, so a checkpoint is
    only ever visible once every file it points to is complete; then the files of
    earlier epochs (``<name>-NNNN.params/.states``) are deleted. Temporary files left
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
    pattern = re.compile(r"^(%s)-(\d{4})\.(params|states)$" % "|".join(
        re.escape(name) for name in files))
    for fname in os.listdir(directory):
        match = pattern.match(fname)
        if match and int(match.group(2)) != epoch:
            os.remove(os.path.join(directory, fname))


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


def get_logger(out_dir, quiet=False, name="train"):
    """A logger writing to ``out_dir/train.log`` and, unless ``quiet``, to stderr.

    While progress bars are shown, wrap the loop in :func:`console_through_tqdm`.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    for handler in logger.handlers:
        handler.close()
    logger.handlers = []
    os.makedirs(out_dir, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(message)s")
    handlers = [logging.FileHandler(os.path.join(out_dir, "train.log"))]
    if not quiet:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def console_through_tqdm(logger):
    """Context in which ``logger``'s console lines are printed through tqdm, so they do
    not tear progress bars (``tqdm.contrib.logging.logging_redirect_tqdm``).

    A logger without a console handler (``quiet``) is left alone: the tqdm context would
    add one.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm
    console = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    if not console:
        return contextlib.nullcontext()
    return logging_redirect_tqdm(loggers=[logger])
