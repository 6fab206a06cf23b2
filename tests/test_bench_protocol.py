"""bench/bench_vs_torch.py's protocol: the PyTorch side never loads MXNet, both sides
build the same inputs, and the driver refuses runs that solve different problems."""
import argparse
import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import bench_vs_torch, softmax_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_text():
    with open(os.path.join(ROOT, "bench", "torch_softmax_ce.py")) as source:
        return source.read()


def test_torch_side_imports_no_mxnet():
    """PyTorch is timed alone: the torch worker's own imports, and the bench modules it
    loads, must not pull MXNet into its process."""
    tree = ast.parse(source_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"argparse", "importlib", "json", "sys", "time", "numpy", "torch",
                        "bench.softmax_cases", "bench.timing"}
    code = ("import sys, bench.softmax_cases, bench.timing, bench.bench_vs_torch; "
            "assert 'mxnet' not in sys.modules, 'mxnet was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_inputs_match_the_mxnet_bench():
    """The in-process bench and both workers time the same arrays."""
    from bench import bench_softmax_ce

    pred, label, weight = softmax_cases.make_inputs((2, 5, 3, 4), 1)
    mx_pred, mx_label, mx_weight = bench_softmax_ce.make_inputs((2, 5, 3, 4), 1)
    np.testing.assert_array_equal(mx_pred.asnumpy(), pred)
    np.testing.assert_array_equal(mx_label.asnumpy(), label)
    np.testing.assert_array_equal(mx_weight, weight)
    assert label.shape == (2, 3, 4) and pred.dtype == np.float32
    assert set(np.unique(label)) <= set(range(-1, 5)) and (label == -1).any()


def run(case, loss, grad, fused=1.0, graph=2.0, floor=0.5, torch=4.0):
    mxnet_run = {"cases": [{"case": case, "loss": loss, "grad_abs_sum": grad,
                            "ms": {"fused": fused, "graph": graph, "floor": floor}}]}
    torch_run = {"cases": [{"case": case, "loss": 3.0, "grad_abs_sum": 2.0,
                            "ms": {"torch": torch}}]}
    return mxnet_run, torch_run


def test_check_same_problem_refuses_a_different_loss():
    bench_vs_torch.check_same_problem(*run("a", 3.0 * (1 + 1e-6), 2.0))
    with pytest.raises(RuntimeError, match="a: MXNet's loss is 3.3.*PyTorch's 3.0"):
        bench_vs_torch.check_same_problem(*run("a", 3.3, 2.0))
    with pytest.raises(RuntimeError, match="grad_abs_sum"):
        bench_vs_torch.check_same_problem(*run("a", 3.0, 2.1))


def test_summary_medians_and_ratio_ranges():
    runs = [run("a", 3.0, 2.0, fused=f, torch=t) for f, t in [(1.0, 4.0), (3.0, 2.0),
                                                              (2.0, 2.0)]]
    row, = bench_vs_torch.summarize(runs)
    assert row["ms"]["fused"] == 2.0 and row["ms"]["torch"] == 2.0
    # Ratios pair each MXNet run with the PyTorch run beside it: 0.25, 1.5, 1.0.
    assert row["ratios"]["fused/torch"] == (1.0, 0.25, 1.5)
    assert bench_vs_torch.ratio_cell(row["ratios"]["fused/torch"]) == "1.00 (0.25-1.50)"
    assert row["best fused/torch"] == 0.5  # 1.0 / 2.0: each side's fastest process


def test_thread_settings_and_environment(monkeypatch):
    assert bench_vs_torch.parse_threads("default,1, 2") == ["default", "1", "2"]
    with pytest.raises(argparse.ArgumentTypeError, match="got '0' in 'default,0'"):
        bench_vs_torch.parse_threads("default,0")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MXNET_CPU_WORKER_NTHREADS", "3")
    default = bench_vs_torch.environment("default", "mxnet")
    assert "OMP_NUM_THREADS" not in default and "MXNET_CPU_WORKER_NTHREADS" not in default
    two = bench_vs_torch.environment("2", "mxnet")
    assert two["OMP_NUM_THREADS"] == two["MKL_NUM_THREADS"] == "2"
    assert two["MXNET_CPU_WORKER_NTHREADS"] == "1"
    assert "MXNET_CPU_WORKER_NTHREADS" not in bench_vs_torch.environment("2", "torch")
