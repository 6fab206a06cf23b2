"""Smoke tests of examples/module_api: outputs, two devices, dist_sync, resume, the command line."""
import json
import math
import os

import numpy as np
import mxnet as mx

from examples.module_api import data as module_data
from examples.module_api.cli import main
from examples.module_api.report import classification_metrics
from examples.module_api.train import last_checkpoint, run, run_center
from loopback_cluster import run_dist_sync, skip_unless_dist

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMALL = dict(epochs=2, max_iters=3, contexts=[mx.cpu()], kvstore="device", lr_decay_epochs=[1])


def test_both_tasks_write_results_and_checkpoints(tmp_path):
    results = run(str(tmp_path), **SMALL)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for task in ("rcnn", "center"):
        assert math.isfinite(saved[task]["accuracy"]) and saved[task]["rows_sum_to_one"]
        assert last_checkpoint(str(tmp_path / "checkpoints" / task)) == 2
        assert (tmp_path / "checkpoints" / ("%s-0002.states" % task)).is_file()
    # Inverse-frequency weights, from the training counts, reach the RCNN head.
    counts = np.array(saved["rcnn"]["class_counts"], dtype=np.float64)
    weights = np.array(saved["rcnn"]["class_weight"])
    np.testing.assert_allclose(weights * counts, (weights * counts)[0], rtol=1e-5)
    # Every training sample moved its center once: 2 epochs x 3 batches x 64.
    assert sum(saved["center"]["center_update_counts"]) == 2 * 3 * 64


def test_center_network_on_two_devices_with_local_kvstore(tmp_path):
    results = run_center(str(tmp_path), contexts=[mx.cpu(0), mx.cpu(1)], kvstore="local",
                         epochs=1, max_iters=4, batch_size=32)
    assert sum(results["center_update_counts"]) == 4 * 32
    assert np.isfinite(np.array(results["centers"])).all()


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    first = run_center(str(tmp_path), epochs=1, max_iters=3, contexts=[mx.cpu()])
    assert sum(first["center_update_counts"]) == 3 * 64
    resumed = run_center(str(tmp_path), epochs=3, max_iters=3, contexts=[mx.cpu()], resume=True)
    # The centers' counts came back from the checkpoint and grew by two more epochs.
    assert sum(resumed["center_update_counts"]) == 3 * 3 * 64
    assert last_checkpoint(str(tmp_path / "checkpoints" / "center")) == 3


def test_command_line_runs_one_task_quietly(tmp_path):
    results = main(["--out", str(tmp_path), "--task", "rcnn", "--epochs", "1", "--max-iters",
                    "2", "--class-weighting", "median", "--quiet"])
    assert list(results) == ["rcnn"]
    args = json.loads((tmp_path / "args.json").read_text())
    assert args["class_weighting"] == "median" and args["epochs"] == 1


def test_metrics_leave_ignored_rois_out():
    probabilities = np.zeros((1, 3, 4))
    probabilities[0, [0, 1, 2, 2], [0, 1, 2, 3]] = 1.0
    labels = np.array([[0, 1, -1, 0]], dtype=np.float32)
    metrics = classification_metrics(probabilities, labels, 3, module_data.IGNORE)
    assert metrics["accuracy"] == 2 / 3
    assert metrics["recall_per_class"] == [0.5, 1.0, None]
    assert metrics["rows_sum_to_one"]


def test_roi_data_are_imbalanced_with_ignored_rois():
    features, labels = module_data.roi_batches(50, seed=3)
    assert features.shape == (50, 64, 32) and labels.shape == (50, 64)
    counts = module_data.class_counts(labels, 6)
    assert counts[0] > 5 * counts[-1] and abs((labels == -1).mean() - 0.25) < 0.05


@skip_unless_dist
def test_center_network_on_two_dist_sync_workers(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run_dist_sync(["-m", "examples.module_api", "--task", "center", "--kvstore", "dist_sync",
                   "--epochs", "2", "--max-iters", "3", "--batch-size", "32", "--quiet",
                   "--out", str(tmp_path)], cwd=ROOT, env=env, timeout=120)
    saved = json.loads((tmp_path / "results.json").read_text())["center"]
    # Eq. 4 counted every sample of both workers: 2 epochs x 3 batches x 32 x 2 workers.
    assert sum(saved["center_update_counts"]) == 2 * 3 * 32 * 2
    assert last_checkpoint(str(tmp_path / "checkpoints" / "center")) == 2


def test_checkpoints_keep_only_the_newest_epoch(tmp_path):
    run_center(str(tmp_path), epochs=3, max_iters=2, contexts=[mx.cpu()])
    names = sorted(os.listdir(str(tmp_path / "checkpoints")))
    assert names == ["center-0003.params", "center-0003.states", "center-symbol.json"]
    loaded = mx.mod.Module.load(str(tmp_path / "checkpoints" / "center"), 3)
    assert "center_state" in loaded.symbol.list_arguments()
