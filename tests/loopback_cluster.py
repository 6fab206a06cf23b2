"""Start an MXNet dist_sync cluster on 127.0.0.1 for a test, bounded in time and cleaned up;
run Python code in a fresh process."""
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

skip_unless_dist = pytest.mark.skipif(os.environ.get("GLUON_LOSSES_SKIP_DIST") == "1",
                                      reason="GLUON_LOSSES_SKIP_DIST=1")


def run_python(code, timeout, stderr=subprocess.PIPE, **env):
    """Run ``code`` (dedented) with ``python -c`` in the repository root; returns the
    CompletedProcess, output as text.

    The environment is this process's with ``env`` on top; a variable set to None is
    removed. ``stderr=subprocess.STDOUT`` interleaves it with stdout.
    """
    environment = {key: value for key, value in dict(os.environ, **env).items()
                   if value is not None}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env=environment, stdout=subprocess.PIPE, stderr=stderr,
                          universal_newlines=True, timeout=timeout)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_when(paths, index, timeout):
    """A ``meanwhile`` for :func:`run_cluster`: once every one of ``paths`` exists, or
    ``timeout`` seconds after the processes started, kill ``processes[index]`` (0 the
    scheduler, 1 the server, 2 on the workers)."""
    def meanwhile(processes):
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(path) for path in paths) and time.monotonic() < deadline:
            time.sleep(0.02)
        processes[index].kill()
    return meanwhile


def run_dist_sync(worker_args, cwd, num_workers=2, timeout=120, env=None):
    """Run a scheduler, one server and ``num_workers`` copies of ``python worker_args``.

    Every worker must exit 0 within ``timeout`` seconds in all, or the test fails with
    its output. Whatever happens, every process started here is killed and reaped.
    """
    for returncode, output in run_cluster(worker_args, cwd, num_workers, timeout, env):
        assert returncode == 0, output[-3000:]


def run_cluster(worker_args, cwd, num_workers=2, timeout=120, env=None, meanwhile=None):
    """As :func:`run_dist_sync`, but returns each worker's (exit status, output) instead of
    requiring 0; a worker still running after ``timeout`` seconds fails the test.
    ``meanwhile(processes)``, if given, runs once every process has started (scheduler,
    server, then the workers), e.g. to kill one of them.

    The scheduler and the server are killed once every worker has ended, and every
    process is reaped before this returns.
    """
    env = dict(os.environ if env is None else env, DMLC_PS_ROOT_URI="127.0.0.1",
               DMLC_PS_ROOT_PORT=str(free_port()), DMLC_NUM_SERVER="1",
               DMLC_NUM_WORKER=str(num_workers), OMP_NUM_THREADS="1")
    idle = ["-c", "import mxnet"]  # importing mxnet with DMLC_ROLE set runs that role
    roles = [("scheduler", idle), ("server", idle)] + [("worker", list(worker_args))] * num_workers
    procs = []
    results = []
    try:
        for role, args in roles:
            procs.append(subprocess.Popen([sys.executable] + args, env=dict(env, DMLC_ROLE=role),
                                          cwd=cwd, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
        if meanwhile is not None:
            meanwhile(procs)
        deadline = time.monotonic() + timeout
        for proc in procs[2:]:
            try:
                output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                pytest.fail("a dist_sync worker did not finish within %d s:\n%s"
                            % (timeout, output.decode(errors="replace")[-3000:]))
            results.append((proc.returncode, output.decode(errors="replace")))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    return results
