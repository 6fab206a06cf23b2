"""Real Horovod (gloo, 2 ranks on 127.0.0.1 through horovodrun): CenterLoss through
``horovod_allreduce`` and WeightedSoftmaxCELoss under ``hvd.DistributedTrainer``.

The graph path (``GLUON_LOSSES_FUSED=0``) runs here; the fused path beside Horovod runs
in ``test_horovod_import_order.py``. Skipped, naming the failed step, where Horovod
cannot be installed (``make horovod``).
"""
import json
import os
import re

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import WeightedSoftmaxCELoss

import dist_center_worker
import horovod_worker as worker
from horovod_cluster import rank_lines, run_horovod, run_worker, skip_unless_horovod
from loopback_cluster import run_dist_sync, skip_unless_dist
from reference import eq4_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = skip_unless_horovod()


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("horovod_graph")
    run_worker(out, fused=False)
    return out


def centers(out, name, rank, step):
    return np.load(os.path.join(str(out), "center_%s_rank%d_step%d.npy" % (name, rank, step)))


def check_centers_are_eq4_on_every_rank(out, name):
    num_classes, dim = worker.CENTER_RUNS[name][:2]
    alpha = worker.center_alpha(name)
    ref = np.zeros((num_classes, dim))
    for step, (x, y) in enumerate(worker.center_batches(name)):
        ref = eq4_reference(ref, x, y, alpha, ignore_label=-1)
        rank0, rank1 = centers(out, name, 0, step), centers(out, name, 1, step)
        np.testing.assert_array_equal(rank0, rank1)
        np.testing.assert_allclose(rank0, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(ref).sum() > 0


def check_softmax_trainer_equals_one_process(out):
    ranks = [dict(np.load(os.path.join(str(out), "softmax_rank%d.npz" % r))) for r in (0, 1)]
    # One process on the global batch, from rank 0's (broadcast) start.
    net = worker.softmax_net()
    net.weight.set_data(nd.array(ranks[0]["initial_weight"]))
    net.bias.set_data(nd.array(ranks[0]["initial_bias"]))
    loss = WeightedSoftmaxCELoss(class_weight=worker.SOFTMAX["class_weight"],
                                 normalization=worker.SOFTMAX["normalization"])
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": worker.SOFTMAX["lr"]})
    for x, y in worker.softmax_batches():
        with autograd.record():
            out_ = loss(net(nd.array(x)), nd.array(y))
        out_.backward()
        trainer.step(len(y))
    moved = False
    for name, param in net.collect_params().items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
        np.testing.assert_allclose(ranks[0][name], param.data().asnumpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
        moved |= not np.allclose(param.data().asnumpy(), ranks[0]["initial_" + name[4:]])
    assert moved


@pytest.mark.parametrize("name", sorted(worker.CENTER_RUNS))
def test_center_loss_centers_identical_on_every_rank_and_eq4_over_the_global_batch(
        graph_run, name):
    check_centers_are_eq4_on_every_rank(graph_run, name)


def test_weighted_softmax_ce_under_distributed_trainer_equals_one_process(graph_run):
    check_softmax_trainer_equals_one_process(graph_run)


@skip_unless_dist
def test_dist_sync_and_horovod_give_the_same_centers(graph_run, tmp_path):
    run_dist_sync(["-m", "tests.dist_center_worker", str(tmp_path)], cwd=ROOT)
    for step in range(dist_center_worker.STEPS):
        dist = np.load(str(tmp_path / ("centers_rank0_step%d.npy" % step)))
        np.testing.assert_allclose(centers(graph_run, "dist_center", 0, step), dist,
                                   rtol=1e-6, atol=1e-7)


def test_the_horovod_block_of_distributed_md_runs_on_two_ranks(tmp_path):
    with open(os.path.join(ROOT, "docs", "distributed.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"^```py\n(.*?)^```$", handle.read(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1 and "horovod_allreduce()" in blocks[0]
    script = tmp_path / "train.py"
    script.write_text(blocks[0])
    returncode, output = run_horovod([str(script)], cwd=str(tmp_path),
                                     env={"GLUON_LOSSES_FUSED": "0"})
    assert returncode == 0, output[-5000:]
    for rank in (0, 1):
        assert "rank %d of 2: centers identical" % rank in "".join(rank_lines(output, rank))


def _faster_rcnn_args(data_root, out, *extra):
    return ["-m", "examples.faster_rcnn", "--horovod", "--data-root", data_root,
            "--shapes-train", "4", "--shapes-test", "2", "--epochs", "1", "--out", out,
            "--quiet"] + list(extra)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """The generated shapes set, made once here so the ranks do not race to write it."""
    from examples.faster_rcnn.data import shapes_datasets
    root = str(tmp_path_factory.mktemp("shapes"))
    shapes_datasets(root, 4, 2, 0)
    return root


def test_faster_rcnn_example_trains_with_horovod_on_two_ranks(tmp_path, shapes_root):
    out = str(tmp_path / "run")
    returncode, output = run_horovod(_faster_rcnn_args(shapes_root, out, "--max-iters", "2"),
                                     timeout=300)
    assert returncode == 0, output[-5000:]
    with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    assert results["config"]["horovod"] is True
    (epoch,) = results["history"]
    for key, value in epoch.items():
        if key.endswith("loss") or key.startswith("rcnn") or key.startswith("rpn"):
            assert np.isfinite(value), (key, value)
    assert results["softmax_ce_paths"]  # the loss ran, on whichever path


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_faster_rcnn_stalled_rank_ends_the_other_and_a_resume_is_bitwise_equal(
        tmp_path, shapes_root, how):
    """Rank 1 is stopped (SIGSTOP) or killed (SIGKILL) once epoch 1 is checkpointed.
    Stopped, it leaves rank 0's next collective waiting forever, and rank 0's watchdog
    must end it with status 75 and a message naming Horovod and the resume command,
    within the timeout. Killed, horovodrun sees the exit and ends rank 0 itself, naming
    the rank. Either way, relaunched with --resume, the job's epoch 2 equals epoch 2 of
    an uninterrupted run bitwise."""
    import signal
    import time
    import psutil

    out = str(tmp_path / "run")
    checkpoint = os.path.join(out, "checkpoints", "checkpoint.json")

    def stop_rank_one_after_epoch_one(proc):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not os.path.exists(checkpoint):
            if proc.poll() is not None:
                return  # the job ended first: the assertions below show its output
            time.sleep(0.2)
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get("HOROVOD_RANK") == "1":
                    child.send_signal(signal.SIGSTOP if how == "stopped" else signal.SIGKILL)
                    return
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        pytest.fail("no checkpoint, or no rank 1, within 240 s")

    started = time.monotonic()
    returncode, output = run_horovod(
        _faster_rcnn_args(shapes_root, out, "--epochs", "3", "--stall-timeout", "20",
                          "--max-iters", "2"),
        timeout=300, meanwhile=stop_rank_one_after_epoch_one)
    assert time.monotonic() - started < 300
    assert returncode != 0
    if how == "stopped":
        rank0 = "\n".join(rank_lines(output, 0))
        assert "stalled" in rank0.lower() or "no progress" in rank0.lower(), output[-5000:]
        assert "horovod" in rank0.lower(), output[-5000:]
        assert "--resume" in rank0 and "Exiting with status 75." in rank0, output[-5000:]
    else:
        assert "Process 1 exit with status code 137" in output, output[-5000:]
        assert "Terminating remaining workers" in output, output[-5000:]

    returncode, output = run_horovod(
        _faster_rcnn_args(shapes_root, out, "--epochs", "2", "--resume", out,
                          "--max-iters", "2"), timeout=300)
    assert returncode == 0, output[-5000:]
    straight = str(tmp_path / "straight")
    returncode, output = run_horovod(
        _faster_rcnn_args(shapes_root, straight, "--epochs", "2", "--max-iters", "2"),
        timeout=300)
    assert returncode == 0, output[-5000:]
    resumed, uninterrupted = (json.load(open(os.path.join(d, "results.json")))["history"]
                              for d in (out, straight))
    assert [h["epoch"] for h in resumed] == [1, 2]
    losses = [k for k in resumed[1] if isinstance(resumed[1][k], float)
              and k not in ("images_per_s", "time_s")]
    assert len(losses) >= 4, losses
    assert {k: resumed[1][k] for k in losses} == {k: uninterrupted[1][k] for k in losses}
