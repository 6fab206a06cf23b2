"""Run Python on Horovod ranks on 127.0.0.1 (``horovodrun --gloo``), bounded in time and
cleaned up; say why Horovod cannot run here, for the tests to skip with.

Horovod is installed into the project venv by ``make horovod`` (see the Makefile); a
failed install leaves the step that failed in ``.venv/.horovod-failed``.
"""
import functools
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
FAILED_STEP = os.path.join(ROOT, ".venv", ".horovod-failed")

# Run in a fresh process: horovod.mxnet loads its library with RTLD_GLOBAL, which must
# not leak into the test process.
_PROBE = ("import horovod.mxnet as hvd; "
          "assert hvd.gloo_built(), 'horovod was built without gloo (HOROVOD_WITH_GLOO=1)'")


@functools.lru_cache(maxsize=None)
def unavailable_reason():
    """None where Horovod runs with MXNet and gloo, else which step failed."""
    if os.path.exists(FAILED_STEP):
        with open(FAILED_STEP, encoding="utf-8") as handle:
            return "make horovod failed while %s" % handle.read().strip()
    if not os.path.exists(HOROVODRUN):
        return ("horovod is not installed in %s (no horovodrun beside it): run make horovod"
                % sys.prefix)
    probe = subprocess.run([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    if probe.returncode != 0:
        return "import horovod.mxnet failed (exit %d): %s" % (
            probe.returncode, probe.stdout.strip().splitlines()[-1:] or "no output")
    return None


def skip_unless_horovod():
    """The mark that skips a test, naming the failed step, where Horovod cannot run."""
    reason = unavailable_reason()
    return pytest.mark.skipif(reason is not None, reason=str(reason))


def _descendants(pid):
    import psutil  # a dependency of horovod, present wherever horovodrun is
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_horovod(args, cwd=ROOT, num_ranks=2, timeout=120, env=None, meanwhile=None):
    """``horovodrun --gloo -np N -H localhost:N python ARGS``; returns (exit status of
    horovodrun, its output: each rank's lines prefixed ``[rank]<stdout>:``).

    ``env`` is added to this process's environment (a value None removes the variable).
    ``meanwhile(proc)``, if given, runs once horovodrun has started. A run still going
    after ``timeout`` seconds fails the test. Whatever happens, horovodrun and every
    process under it (each rank runs in its own session) are killed and reaped.
    """
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    environment.update(env or {})
    environment = {key: value for key, value in environment.items() if value is not None}
    command = [HOROVODRUN, "--gloo", "-np", str(num_ranks), "-H", "localhost:%d" % num_ranks,
               sys.executable] + list(args)
    proc = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen = set()
    try:
        if meanwhile is not None:
            meanwhile(proc)
        deadline = time.monotonic() + timeout
        while True:
            seen.update(_descendants(proc.pid))
            try:
                output, _ = proc.communicate(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    proc.kill()
                    output, _ = proc.communicate()
                    pytest.fail("horovodrun did not finish within %d s:\n%s"
                                % (timeout, output.decode(errors="replace")[-3000:]))
    finally:
        seen.update(_descendants(proc.pid))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in seen:
            try:
                child.kill()
            except Exception:               # pylint: disable=broad-except; already gone
                pass
        proc.wait(timeout=30)
        proc.stdout.close()
        for child in seen:
            try:
                child.wait(timeout=30)
            except Exception:               # pylint: disable=broad-except; not our child
                pass
    return proc.returncode, output.decode(errors="replace")


def rank_lines(output, rank):
    """The lines rank ``rank`` printed, without horovodrun's prefix."""
    prefixes = ("[%d]<stdout>:" % rank, "[%d]<stderr>:" % rank)
    return [line.split(":", 1)[1] for line in output.splitlines()
            if line.startswith(prefixes)]


def run_worker(out_dir, fused, timeout=180):
    """``tests/horovod_worker.py`` on 2 ranks, on the fused path (the default) or the
    graph path (``GLUON_LOSSES_FUSED=0``); every rank must finish."""
    returncode, output = run_horovod(["-m", "tests.horovod_worker", str(out_dir)],
                                     timeout=timeout,
                                     env={"GLUON_LOSSES_FUSED": None if fused else "0"})
    assert returncode == 0, output[-5000:]
    for rank in (0, 1):
        assert "rank %d done" % rank in rank_lines(output, rank), output[-5000:]
    return output
