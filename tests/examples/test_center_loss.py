"""examples/center_loss: outputs, exact resume, devices, imbalance, data errors, gradients."""
import gzip
import inspect
import json
import math
import os
import subprocess
import sys

import numpy as np
import mxnet as mx
import pytest
from gluon_losses import fused

from examples.center_loss import cli
from examples.center_loss import data as center_data
from examples.center_loss.train import run
from loopback_cluster import kill_when, run_cluster, run_dist_sync, skip_unless_dist

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A small network and a few batches keep each run to a few seconds.
TINY = dict(channels=(4, 8, 8), convs_per_stage=1, batch_size=32, quiet=True)
TINY_FLAGS = ["--channels", "4,8,8", "--convs-per-stage", "1", "--batch-size", "32", "--quiet"]
OUTPUTS = ["args.json", "results.json", "train.log", "features_softmax.png",
           "features_center.png", "loss_curves.png", "softmax-net.params", "center-net.params",
           "centers.params", "checkpoints/checkpoint.json"]


def write_idx_gz(path, array):
    """Write ``array`` (uint8) in MNIST's idx format, gzipped."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def params_of(out):
    """Every saved parameter of the run in ``out`` (networks, centers, center counts)."""
    arrays = {}
    for name in ("softmax-net", "center-net"):
        for key, value in mx.nd.load(os.path.join(out, name + ".params")).items():
            arrays[name + "/" + key] = value.asnumpy()
    for key, value in mx.nd.load(os.path.join(out, "centers.params")).items():
        arrays["centers/" + key] = value.asnumpy()
    return arrays


def test_smoke_writes_every_output_with_finite_metrics(tmp_path, capfd):
    metrics = run(str(tmp_path), epochs=2, max_iters=3, **TINY)
    # quiet: nothing on the console, everything in the log file
    console = capfd.readouterr()
    assert "epoch" not in console.out + console.err
    assert "epoch  2/2" in (tmp_path / "train.log").read_text()
    for name in OUTPUTS:
        assert (tmp_path / name).is_file(), name
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["train_counts"] == metrics["train_counts"]
    # which softmax CE implementation ran (the process's record: other tests add theirs)
    expected_path = "fused" if fused.available() else "graph: %s" % fused.unavailable_reason()
    assert expected_path in saved["softmax_ce_paths"]
    for model in ("softmax", "center"):
        for key in ("test_accuracy", "balanced_accuracy", "compactness",
                    "compactness_class_means", "nearest_center_accuracy"):
            assert math.isfinite(saved[model][key]), (model, key)
        assert np.isfinite(np.array(saved[model]["centers"])).all()
        assert np.array(saved[model]["centers"]).shape == (10, 2)
    assert saved["softmax"]["centers_source"] == "class means of training features"
    assert saved["center"]["centers_source"] == "learned CenterLoss centers"
    assert sum(saved["train_counts"]) == 1347 and sum(saved["test_counts"]) == 450
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    # the learned centers are the ones saved with the parameters
    centers = mx.nd.load(str(tmp_path / "centers.params"))
    key = [k for k in centers if k.endswith("centers")][0]
    np.testing.assert_array_equal(centers[key].asnumpy(), np.array(saved["center"]["centers"],
                                                                    dtype=np.float32))
    # only the last epoch's checkpoint files are kept
    ckpt = sorted(os.listdir(tmp_path / "checkpoints"))
    assert all("0001" not in name for name in ckpt), ckpt


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    experiment = dict(TINY, max_iters=4, lr_decay_epochs="1", seed=3)
    run(str(straight), epochs=2, **experiment)
    run(str(split), epochs=1, **experiment)
    first = params_of(split)
    # resuming into another folder reads the first one's checkpoint
    elsewhere = run(str(tmp_path / "elsewhere"), resume=str(split), epochs=2, **experiment)
    assert [h["epoch"] for h in elsewhere["history"]] == [1, 2]
    # the lr schedule resumed with the optimizer: epoch 2 runs at the decayed rate
    assert [h["lr"] for h in elsewhere["history"]] == pytest.approx([0.003, 0.0003], rel=1e-12)
    straight_params = params_of(straight)
    for key, value in params_of(tmp_path / "elsewhere").items():
        np.testing.assert_array_equal(value, straight_params[key], err_msg=key)
    resumed = run(str(split), resume=str(split), epochs=2, **experiment)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a, b = straight_params, params_of(split)
    assert sorted(a) == sorted(b) and len(a) >= 10
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # and the resumed epoch really trained (centers moved on from epoch 1)
    center_key = [k for k in a if k.startswith("centers/") and k.endswith("centers")][0]
    assert not np.array_equal(first[center_key], b[center_key])
    hist_a = json.loads((straight / "results.json").read_text())["history"]
    hist_b = json.loads((split / "results.json").read_text())["history"]
    for ha, hb in zip(hist_a, hist_b):
        assert ha["softmax"] == hb["softmax"] and ha["center"] == hb["center"]


def test_resume_refuses_changed_experiment(tmp_path):
    run(str(tmp_path), epochs=1, max_iters=1, **TINY)
    with pytest.raises(ValueError, match=r"lam 0\.5 \(saved: 0\.01\)"):
        run(str(tmp_path), resume=str(tmp_path), lam=0.5, epochs=2, **TINY)


def test_every_flag_is_an_argument_of_run():
    dests = {a.dest for a in cli.build_parser()._actions} - {"help"}
    assert dests == set(inspect.signature(run).parameters) - {"command"}
    assert cli.DEFAULTS["lam"] == 0.01 and cli.DEFAULTS["beta"] == 0.999


def test_two_cpu_contexts_kvstore_and_imbalance(tmp_path):
    metrics = run(str(tmp_path), epochs=1, max_iters=3, ctx="cpu:0,cpu:1", kvstore="local",
                  imbalance=5, hybridize=False, **TINY)
    counts = metrics["train_counts"]
    assert metrics["class_weighting"] == "inverse"
    assert metrics["minority_classes"] == [5, 6, 7, 8, 9]
    assert max(counts[5:]) * 4 < min(counts[:5])              # 1/5 of the minority kept
    weights = np.array(metrics["class_weights"])
    assert np.all(weights[5:] > 3 * weights[:5].max())
    for model in ("softmax", "center"):
        assert math.isfinite(metrics[model]["minority_accuracy"])
        assert math.isfinite(metrics[model]["compactness"])


def test_mnist_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(center_data.DataError) as err:
        run(str(tmp_path / "o"), dataset="mnist", data_dir=str(tmp_path), **TINY)
    message = str(err.value)
    for name in center_data.MNIST_FILES["mnist"]:
        assert name in message
    assert str(tmp_path) in message and "Nothing is downloaded" in message
    with pytest.raises(center_data.DataError, match="--data-dir"):
        center_data.load("fashion-mnist", None, 28)


def test_mnist_reads_local_files_through_gluon_without_download(tmp_path, monkeypatch):
    import mxnet.gluon.utils as gluon_utils

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download %r" % (args,))
    # gluon's reader still calls gluon.utils.download, which must find the files valid
    # and return without touching the network
    monkeypatch.setattr(gluon_utils.requests, "get", no_network)
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = (rng.rand(n, 28, 28) * 80).astype(np.uint8)
        write_idx_gz(tmp_path / ("%s-images-idx3-ubyte.gz" % prefix), images)
        write_idx_gz(tmp_path / ("%s-labels-idx1-ubyte.gz" % prefix), labels)
    (x_tr, y_tr), (x_te, y_te) = center_data.load("mnist", str(tmp_path), 16)
    assert x_tr.shape == (40, 1, 16, 16) and x_te.shape == (20, 1, 16, 16)
    assert y_tr.tolist() == (np.arange(40) % 10).tolist()
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    metrics = run(str(tmp_path / "run"), dataset="mnist", data_dir=str(tmp_path), size=16,
                  epochs=1, **TINY)
    assert metrics["train_counts"] == [4] * 10


def test_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "examples.center_loss", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--lambda", "--alpha", "--resume", "--imbalance", "--kvstore", "--gpus",
                 "--no-hybridize", "--seed", "--quiet", "--dataset", "--data-dir",
                 "--class-weighting", "--lr-decay-epochs", "--max-iters"):
        assert flag in out.stdout


def test_network_gradients_hybridized_match_imperative_and_finite_differences():
    from mxnet import autograd
    import gluon_losses
    from examples.center_loss.model import LeNetsPP
    (x, y), _ = center_data.load_digits(16)
    x, y = mx.nd.array(x[:32]), mx.nd.array(y[:32].astype(np.float32))
    grads = []
    for hybridize in (False, True):
        mx.random.seed(0)
        net = LeNetsPP(10, 2, (4, 8, 8), 1, size=16, prefix="n_")
        net.initialize(mx.init.Xavier(magnitude=2.24))
        ce = gluon_losses.WeightedSoftmaxCELoss()
        if hybridize:
            net.hybridize(static_alloc=True)
        with autograd.record():
            loss = ce(net(x)[0], y)
        loss.backward()
        grads.append({k: p.grad().asnumpy() for k, p in net.collect_params().items()})
    for key in grads[0]:
        np.testing.assert_allclose(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    # the PReLU slopes, whose gradient MXNet's fused PReLU gets wrong when hybridized
    alpha = net.collect_params()["n_prelu1_alpha"]
    base = alpha.data().copy()
    for j in range(2):
        values = []
        for eps in (1e-2, -1e-2):
            shifted = base.copy()
            shifted[j] += eps
            alpha.set_data(shifted)
            values.append(ce(net(x)[0], y).sum().asscalar())
        numeric = (values[0] - values[1]) / 2e-2
        assert abs(numeric - grads[1]["n_prelu1_alpha"][j]) < 0.05 * abs(numeric) + 2e-3


@skip_unless_dist
def test_dist_sync_two_workers_agree_and_equal_one_process(tmp_path):
    """Loopback dist_sync: each worker trains on its half of every batch."""
    args = ["--out", str(tmp_path / "dist"), "--kvstore", "dist_sync", "--epochs", "1",
            "--max-iters", "3"] + TINY_FLAGS
    run_dist_sync(["-m", "examples.center_loss"] + args, cwd=ROOT)
    run(str(tmp_path / "single"), epochs=1, max_iters=3, **TINY)
    rank0, rank1 = params_of(tmp_path / "dist"), params_of(tmp_path / "dist" / "worker-1")
    single = params_of(tmp_path / "single")
    for key in rank0:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
        np.testing.assert_allclose(rank0[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)
    for name in OUTPUTS:
        assert (tmp_path / "dist" / name).is_file(), name


@skip_unless_dist
def test_dist_sync_killed_worker_ends_the_run_and_resume_equals_an_uninterrupted_run(tmp_path):
    """A worker killed after the first checkpoint: the other one exits with status 75
    within --stall-timeout, and relaunching both with --resume ends bitwise equal to a
    run that was never interrupted."""
    from gluon_losses.distributed import STALL_EXIT_CODE
    flags = ["--kvstore", "dist_sync", "--epochs", "3", "--max-iters", "3",
             "--stall-timeout", "20"] + TINY_FLAGS
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_dist_sync(["-m", "examples.center_loss", "--out", str(whole)] + flags, cwd=ROOT)

    kill_a_worker_after_the_first_checkpoint = kill_when(
        [broken / "checkpoints" / "checkpoint.json"], 3, 120)
    results = run_cluster(["-m", "examples.center_loss", "--out", str(broken)] + flags,
                          cwd=ROOT, meanwhile=kill_a_worker_after_the_first_checkpoint)
    (survivor_code, output), (killed_code, _) = results
    assert killed_code == -9
    assert survivor_code == STALL_EXIT_CODE, output[-3000:]
    assert "in the dist_sync kvstore, at epoch" in output
    assert "relaunch every process with --resume %s" % broken in output
    run_dist_sync(["-m", "examples.center_loss", "--resume", str(broken)] + flags, cwd=ROOT)
    for folder in ("", "worker-1"):
        expected, resumed = params_of(whole / folder), params_of(broken / folder)
        assert sorted(expected) == sorted(resumed)
        for key in expected:
            np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
