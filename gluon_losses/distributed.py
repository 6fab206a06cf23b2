"""A watchdog for distributed training loops: a stalled cluster ends the process.

With a ``dist_sync`` kvstore, a worker, server or scheduler that dies leaves every
other process waiting forever inside a push or pull: nothing raises, nothing is
logged. :class:`StallWatchdog` turns that into an exit with a message. The training
loop reports progress with :meth:`StallWatchdog.beat`; when no beat arrives for
``timeout`` seconds, a background thread prints what stalled, the Python stacks (so
the blocked kvstore call shows), and how to resume, then ends the process with
``exit_code`` (75, ``EX_TEMPFAIL``: worth retrying). A blocked kvstore call cannot be
interrupted from Python, so ending the process is the only way out.

Usage::

    from gluon_losses.distributed import StallWatchdog

    with StallWatchdog(timeout=300, what="dist_sync kvstore",
                       resume="relaunch every process with --resume runs/exp") as watchdog:
        kv = mx.kv.create("dist_sync")          # blocks until the cluster is up
        for epoch in range(epochs):
            for i, batch in enumerate(data):
                watchdog.beat("epoch %d, batch %d" % (epoch, i))
                ...                               # forward, backward, trainer.step
            with watchdog.paused():               # a long evaluation or checkpoint
                evaluate()

Choose ``timeout`` above the longest time between two beats on any worker: the first
step (it builds graphs and broadcasts the parameters), and an evaluation or a
checkpoint, since a worker still evaluating holds the others at their next kvstore
call (``paused`` stops only this process's count). The servers and the scheduler run
no Python loop: the launcher must stop them when a worker exits with a non-zero code.

A dist kvstore also talks to the cluster when it is freed, at the latest when the
process exits; with ``watch_exit=True`` the watchdog, once stopped, watches the
process's exit: it frees unreachable objects (the kvstore among them) under the same
timeout. Keep the kvstore out of module globals, which Python frees only after
every thread has stopped.
"""
import atexit
import contextlib
import faulthandler
import gc
import os
import sys
import threading
import time

__all__ = ["StallWatchdog", "STALL_EXIT_CODE", "horovod_allreduce"]

# EX_TEMPFAIL from sysexits.h: a temporary failure, the job can be relaunched.
STALL_EXIT_CODE = 75


def horovod_allreduce():
    """The ``allreduce`` of :meth:`CenterLoss.trainer` under Horovod: sums an NDArray
    over every rank in place (``hvd.allreduce_(array, op=hvd.Sum)``).

    Horovod is imported here, not with the package, which needs only MXNet; call
    ``hvd.init()`` first. With one rank the sum leaves the array as it is.
    """
    import horovod.mxnet as hvd

    def allreduce(array):
        hvd.allreduce_(array, op=hvd.Sum)

    return allreduce


class StallWatchdog:
    """Ends the process when the training loop makes no progress for ``timeout`` seconds.

    Parameters
    ----------
    timeout : float or None
        Seconds without a :meth:`beat` after which the process is ended (> 0). None:
        the watchdog watches nothing, so one loop serves runs with and without a
        cluster.
    what : str, default "dist_sync cluster"
        What the loop waits on, named in the message (e.g. ``"dist_sync kvstore"``).
    resume : str or None
        How to resume, appended to the message (e.g. the command line with
        ``--resume``).
    exit_code : int, default 75
        The process's exit status after a stall (non-zero).
    stream : file, default sys.stderr
        Where the message and the stacks go. A file object with a ``fileno``.
    on_stall : callable or None
        Called with the message before the process ends (e.g. to log it); must not
        block. Its errors are ignored.
    watch_exit : bool, default False
        After ``stop()``, watch the process's exit: at exit, free the kvstore under the
        timeout (see the module docstring). Nothing is watched in between.

    The watchdog starts counting at ``start()`` (or on entering the ``with`` block)
    and stops at ``stop()``. :attr:`stalled_for` tells how long since the last beat.
    """

    def __init__(self, timeout, what="dist_sync cluster", resume=None,
                 exit_code=STALL_EXIT_CODE, stream=None, on_stall=None, watch_exit=False):
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < float("inf")):
            raise ValueError("timeout must be a positive number of seconds or None, got %r"
                             % (timeout,))
        if isinstance(exit_code, bool) or not isinstance(exit_code, int) \
                or not 0 < exit_code < 256:
            raise ValueError("exit_code must be an integer in [1, 255], got %r" % (exit_code,))
        if on_stall is not None and not callable(on_stall):
            raise ValueError("on_stall must be callable or None, got %r" % (on_stall,))
        self.timeout = None if timeout is None else float(timeout)
        self.what = what
        self.resume = resume
        self.exit_code = exit_code
        self.stream = stream
        self.on_stall = on_stall
        self.watch_exit = bool(watch_exit)
        self._where = "starting"
        self._last = time.monotonic()
        self._paused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self._thread is None and self.timeout is not None:
            self._stop.clear()
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="StallWatchdog",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self):
        if self.watch_exit and self._thread is not None:
            # Not counting until the process exits, where the kvstore shuts down.
            with self._lock:
                self._paused += 1
            atexit.register(self._exit_under_watch)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _exit_under_watch(self):
        # atexit handlers run while threads still do; freeing the kvstore here (it
        # sits in reference cycles with the trainers) keeps its shutdown watched.
        with self._lock:
            self._paused -= 1
        self.beat("process exit (freeing the kvstore)")
        gc.collect()
        self.watch_exit = False
        self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def beat(self, where=None):
        """Record progress; ``where`` (e.g. ``"epoch 2, batch 17"``) names the next phase."""
        with self._lock:
            self._last = time.monotonic()
            if where is not None:
                self._where = where

    @contextlib.contextmanager
    def paused(self):
        """No stall is detected inside this block (a long evaluation or save)."""
        with self._lock:
            self._paused += 1
        try:
            yield self
        finally:
            with self._lock:
                self._paused -= 1
                self._last = time.monotonic()

    @property
    def stalled_for(self):
        """Seconds since the last beat (0 while paused)."""
        with self._lock:
            return 0.0 if self._paused else time.monotonic() - self._last

    def message(self, waited):
        text = ("StallWatchdog: no progress for %.0f s (timeout %.0f s) in %s, at %s: a "
                "process of the job (worker, server or scheduler) has probably died or hangs."
                % (waited, self.timeout, self.what, self._where))
        if self.resume:
            text += " To resume: %s." % self.resume
        return text + " Exiting with status %d." % self.exit_code

    def _watch(self):
        interval = min(1.0, self.timeout / 10)
        while not self._stop.wait(interval):
            waited = self.stalled_for
            if waited >= self.timeout:
                self._fire(waited)

    def _fire(self, waited):
        text = self.message(waited)
        stream = self.stream or sys.stderr
        try:
            if self.on_stall is not None:
                self.on_stall(text)
        except Exception:                                    # pylint: disable=broad-except
            pass
        try:
            stream.write(text + "\n")
            stream.flush()
            # Where each thread was blocked: the kvstore call that never returned.
            faulthandler.dump_traceback(file=stream, all_threads=True)
            stream.write(text + "\n")
            stream.flush()
        finally:
            # A thread blocked inside MXNet cannot be interrupted; end the process.
            os._exit(self.exit_code)
