"""StallWatchdog: a stalled loop or dist_sync cluster ends the process with a message,
and a relaunch with resume ends bitwise equal to an uninterrupted run."""
import os
import time

import numpy as np
import pytest

from gluon_losses.distributed import STALL_EXIT_CODE, StallWatchdog
from loopback_cluster import kill_when, run_cluster, run_python, skip_unless_dist

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = ["-m", "tests.dist_stall_worker"]


def run_timed(code, timeout=60):
    started = time.monotonic()
    proc = run_python(code, timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


LOOP = """
import time
from gluon_losses.distributed import StallWatchdog
with StallWatchdog({timeout}, what="a test loop", resume="run it again") as watchdog:
    for step in range({steps}):
        watchdog.beat("step %d" % step)
        time.sleep({step_time})
    with watchdog.paused():
        time.sleep({paused_time})
    watchdog.beat("the hang")
    print("hanging", flush=True)
    time.sleep({hang})
print("finished", flush=True)
"""


def test_a_stalled_loop_exits_with_a_message_naming_what_stalled_and_how_to_resume():
    # Steps and a pause longer than the timeout in total must not fire; the hang must.
    code = LOOP.format(timeout=1.0, steps=5, step_time=0.3, paused_time=1.2, hang=60)
    returncode, output, seconds = run_timed(code)
    assert returncode == STALL_EXIT_CODE, output
    assert "hanging" in output and "finished" not in output
    assert "no progress for 1 s (timeout 1 s) in a test loop, at the hang" in output
    assert "To resume: run it again." in output
    assert "most recent call first" in output and "in <module>" in output  # the stacks
    assert seconds < 30


def test_a_loop_that_keeps_beating_finishes_normally():
    code = LOOP.format(timeout=1.0, steps=4, step_time=0.2, paused_time=0.0, hang=0.1)
    returncode, output, _ = run_timed(code)
    assert returncode == 0 and "finished" in output, output


@pytest.mark.parametrize("kwargs, name", [
    (dict(timeout=0), "timeout"), (dict(timeout=float("inf")), "timeout"),
    (dict(timeout="60"), "timeout"), (dict(timeout=1, exit_code=0), "exit_code"),
    (dict(timeout=1, on_stall="log"), "on_stall"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        StallWatchdog(**kwargs)


def test_timeout_none_watches_nothing():
    watchdog = StallWatchdog(None, watch_exit=True)
    with watchdog:
        watchdog.beat("a")
    assert watchdog._thread is None


def test_stalled_for_counts_from_the_last_beat_and_not_while_paused():
    watchdog = StallWatchdog(60)
    watchdog.beat("a")
    time.sleep(0.05)
    assert watchdog.stalled_for >= 0.05
    with watchdog.paused():
        assert watchdog.stalled_for == 0.0
    assert watchdog.stalled_for < 0.05
    assert "at a" in watchdog.message(61.0)


def _final(out_dir, rank):
    with np.load(os.path.join(out_dir, "final_rank%d.npz" % rank)) as arrays:
        return {name: arrays[name] for name in arrays.files}


ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
STALL_TIMEOUT = "3"


def _by_rank(results):
    """Workers are launched in one order and get their ranks in another."""
    return {int(output.split("rank ", 1)[1].split()[0]): (code, output)
            for code, output in results}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    results = run_cluster(WORKER + [out, "-1", "-1", STALL_TIMEOUT], ROOT, env=ENV)
    assert [r for r, _ in results] == [0, 0], results
    return out


@skip_unless_dist
def test_killed_worker_stalls_the_other_which_exits_and_a_resume_ends_bitwise_equal(
        tmp_path, uninterrupted):
    # Rank 0, which writes the checkpoints, dies at step 5; step 4's is the last one.
    started = time.monotonic()
    results = _by_rank(run_cluster(WORKER + [str(tmp_path), "0", "5", STALL_TIMEOUT], ROOT,
                                   env=ENV))
    assert time.monotonic() - started < 90
    assert results[0][0] == -9, results[0]
    returncode, output = results[1]
    assert returncode == STALL_EXIT_CODE, output[-3000:]
    assert "no progress for 3 s (timeout 3 s) in the dist_sync kvstore, at step 5" in output
    assert "To resume: relaunch every process with --resume" in output
    assert not os.path.exists(os.path.join(str(tmp_path), "final_rank1.npz"))
    results = run_cluster(WORKER + [str(tmp_path), "-1", "-1", STALL_TIMEOUT, "--resume"],
                          ROOT, env=ENV)
    assert [r for r, _ in results] == [0, 0], results
    for rank in (0, 1):
        expected, resumed = _final(uninterrupted, rank), _final(str(tmp_path), rank)
        assert sorted(expected) == sorted(resumed)
        for name in expected:
            np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)


@skip_unless_dist
@pytest.mark.parametrize("when, markers", [
    ("at step", ["checkpoint.json"]),
    ("at process exit", ["final_rank0.npz", "final_rank1.npz"]),
])
def test_killed_server_stalls_every_worker_which_all_exit(tmp_path, when, markers):
    """Killed mid-training, or once training is done, when the workers' kvstores are
    yet to shut down (--linger gives the test a second to kill it at that point)."""
    started = []
    kill_server = kill_when([tmp_path / name for name in markers], 1, 60)

    def kill_server_at_the_marker(procs):
        started.extend(procs)
        kill_server(procs)

    results = run_cluster(WORKER + [str(tmp_path), "-1", "-1", STALL_TIMEOUT, "--linger"],
                          ROOT, env=ENV, timeout=60, meanwhile=kill_server_at_the_marker)
    for returncode, output in results:
        assert returncode == STALL_EXIT_CODE, output[-3000:]
        assert "in the dist_sync kvstore, %s" % when in output
    assert len(started) == 4 and all(proc.poll() is not None for proc in started)
