"""The fused softmax CE operator against the MXNet-operator graph and the float64 reference.

Every test of tests/test_softmax_ce.py runs there on the default path (the fused
operator wherever a compiler is present) and once more here on the graph, so one
``make test`` exercises both. The tests below compare the two paths directly, in
every mode and layout, and cover how the path is chosen, built, cached and exported.
"""
import json
import os
import subprocess
import types
import zlib

import numpy as np
import pytest
import mxnet as mx

from gluon_losses import WeightedSoftmaxCELoss, fused
import reference
import test_softmax_ce
from loopback_cluster import run_python
from reference import run_loss
from test_softmax_ce import random_case, assert_close_to_float32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fused = pytest.mark.skipif(not fused.available(), reason="fused operator unavailable: %s"
                                 % fused.unavailable_reason())


# --- every softmax test again, on the graph ----------------------------------------------

@pytest.fixture
def graph_path(monkeypatch):
    """Make every WeightedSoftmaxCELoss built in the test run on the MXNet-operator graph."""
    monkeypatch.setattr(fused, "available", lambda: False)
    monkeypatch.setattr(fused, "unavailable_reason", lambda: "forced by the test")


def _on_graph(test):
    """A copy of ``test`` (marks and parameters included) that runs on the graph."""
    copy = types.FunctionType(test.__code__, test.__globals__, test.__name__ + "_on_graph",
                              test.__defaults__, test.__closure__)
    copy.__dict__.update(test.__dict__)
    return pytest.mark.usefixtures("graph_path")(copy)


# Hypothesis refuses function-scoped fixtures; the property test stays on the default path
# and the comparisons below cover the graph in every mode.
for _name in dir(test_softmax_ce):
    _test = getattr(test_softmax_ce, _name)
    if _name.startswith("test_") and not getattr(_test, "is_hypothesis_test", False):
        globals()[_name + "_on_graph"] = _on_graph(_test)


# --- the two paths against each other and the reference ---------------------------------

LAYOUTS = [  # (pred shape, class axis, batch_axis)
    ((7, 4), -1, 0),
    ((2, 5, 3), -1, 0),
    ((2, 3, 4, 5), 1, 0),
    ((3, 4, 2), 1, 1),
    ((2, 3, 4, 5), -3, 2),
    ((4, 6, 3), 0, 0),
]
MODES = [  # (normalization, class weights, sample weight shape kind, label smoothing, ignore)
    ("valid", True, None, 0.0, -1),
    ("batch", False, "full", 0.0, -1),
    ("weight", True, "full", 0.0, -1),
    ("null", True, "batch", 0.0, 255),
    ("none", True, "full", 0.0, -1),
    ("valid", True, "full", 0.2, -1),
    ("weight", False, None, 0.1, None),
    ("none", False, "batch", 0.3, 255),
]


def _sample_weight(kind, label_shape, batch_axis, rng):
    if kind is None:
        return None
    if kind == "full":
        weights = rng.uniform(0.0, 2.0, size=label_shape)
        weights[rng.rand(*label_shape) < 0.2] = 0.0  # zero weights carry no loss
        return weights.astype(np.float32)
    shape = [1] * len(label_shape)
    shape[batch_axis] = label_shape[batch_axis]
    return rng.uniform(0.5, 2.0, size=shape).astype(np.float32)


def _both_paths(kwargs, pred, label, sample_weight, hybridize):
    results = []
    for use_fused in (None, False):
        loss_fn = WeightedSoftmaxCELoss(fused=use_fused, **kwargs)
        if hybridize:
            loss_fn.hybridize()
        results.append(run_loss(loss_fn, pred, label, sample_weight))
    return results


@needs_fused
@pytest.mark.parametrize("shape, axis, batch_axis", LAYOUTS)
@pytest.mark.parametrize("normalization, weighted, sample_kind, smoothing, ignore_label", MODES)
def test_paths_agree_with_each_other_and_the_reference(shape, axis, batch_axis, normalization,
                                                      weighted, sample_kind, smoothing,
                                                      ignore_label):
    rng = np.random.RandomState(zlib.crc32(repr((shape, axis, normalization, sample_kind,
                                                 smoothing)).encode()))
    pred, label, class_weight = random_case(shape, axis, seed=rng.randint(2**31),
                                            ignore_label=-1 if ignore_label is None else ignore_label)
    sample_weight = _sample_weight(sample_kind, label.shape, batch_axis, rng)
    kwargs = dict(class_weight=class_weight if weighted else None, axis=axis,
                  normalization=normalization, label_smoothing=smoothing,
                  ignore_label=ignore_label, batch_axis=batch_axis)
    if ignore_label is None:
        label[label < 0] = 0
    (fused_value, fused_grad), (graph_value, graph_grad) = _both_paths(
        kwargs, pred, label, sample_weight, hybridize=normalization != "none")
    expected = reference.softmax_ce(pred, label, sample_weight=sample_weight, **kwargs)
    assert_close_to_float32(fused_value, expected, rtol=1e-5, atol=1e-6)
    # The graph's float32 log_softmax along the last axis errs by ~4e-6 of the largest
    # log-probability, times the weights.
    assert_close_to_float32(graph_value, fused_value, rtol=1e-5, atol=1e-5)
    expected_grad = reference.reference_grad(pred, label, sample_weight=sample_weight, **kwargs)
    assert_close_to_float32(fused_grad, expected_grad, rtol=1e-3, atol=1e-5)
    # The graph's float32 log_softmax and its mean (label smoothing) err by ~1e-6 of the
    # largest gradient; the fused path computes p - onehot directly.
    np.testing.assert_allclose(fused_grad, graph_grad, rtol=1e-4,
                               atol=1e-5 * max(1.0, np.abs(graph_grad).max()))
    # Positions that carry no weight have exactly zero gradient on the fused path.
    position_weight = np.ones(label.shape) if sample_weight is None else np.broadcast_to(
        sample_weight, label.shape)
    no_weight = (position_weight == 0) | (label == ignore_label)
    assert np.all(np.moveaxis(fused_grad, axis, -1)[no_weight] == 0)


@needs_fused
@pytest.mark.parametrize("normalization", ["valid", "batch", "weight", "null", "none"])
def test_extreme_logits_zero_where_no_weight_finite_elsewhere(normalization):
    big = np.finfo(np.float32).max
    pred = np.array([[-big, big, 0.0], [big, -big, -big], [0.0, 0.0, 0.0], [big, big, -big]],
                    np.float32)
    label = np.array([-1, 0, 2, 1], np.float32)
    sample_weight = np.array([1.0, 1.0, 0.0, 2.0], np.float32)
    loss_fn = WeightedSoftmaxCELoss([1.0, 0.0, 2.0], normalization=normalization)
    value, grad = run_loss(loss_fn, pred, label, sample_weight)
    # Row 0 is ignored, row 2 has sample weight 0 and row 3 class weight 0: exactly 0;
    # row 1's loss is 0 (its label holds the maximum); every gradient is finite.
    assert np.all(value == 0) and np.all(np.isfinite(grad))
    assert np.all(grad[[0, 2, 3]] == 0)


@needs_fused
@pytest.mark.parametrize("normalization", ["valid", "batch", "null", "none"])
def test_bad_labels_are_nan_in_their_sample_only(normalization):
    loss_fn = WeightedSoftmaxCELoss(normalization=normalization)
    loss_fn.hybridize()
    pred = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    for bad in (1.5, 3.0, -2.0, float("nan")):
        value, grad = run_loss(loss_fn, pred, np.array([0, bad, -1, 2], np.float32))
        assert np.isnan(value[1]) and np.all(np.isnan(grad[1])), (bad, value)
        assert np.all(np.isfinite(value[[0, 2, 3]])) and np.all(np.isfinite(grad[[0, 2, 3]]))


@needs_fused
def test_float16_input_matches_float32():
    pred, label, class_weight = random_case((3, 5, 8, 8), 1, seed=5)
    loss_fn = WeightedSoftmaxCELoss(class_weight, axis=1)
    value16, grad16 = run_loss(loss_fn, pred.astype(np.float16), label)
    value32, grad32 = run_loss(loss_fn, pred.astype(np.float16).astype(np.float32), label)
    np.testing.assert_allclose(value16, value32, rtol=1e-6)
    np.testing.assert_allclose(grad16, grad32, rtol=1e-3, atol=1e-4)


@needs_fused
def test_large_nchw_batch_uses_threads_and_matches_graph():
    """Big enough for the parallel loops (2**18 logits a thread, several blocks each) on
    both layouts."""
    for shape, axis in [((2, 5, 256, 256), 1), ((80000, 7), -1)]:
        pred, label, class_weight = random_case(shape, axis, seed=8)
        kwargs = dict(class_weight=class_weight, axis=axis, normalization="weight")
        (fused_value, fused_grad), (graph_value, graph_grad) = _both_paths(
            kwargs, pred, label, None, hybridize=True)
        expected = reference.softmax_ce(pred, label, **kwargs)
        # float64 sums make the fused path the closer one: within 2e-7, where the graph's
        # float32 sums over 131072 positions a sample are 2e-5 off.
        assert_close_to_float32(fused_value, expected, rtol=2e-7, atol=2e-7)
        assert_close_to_float32(graph_value, expected, rtol=5e-5, atol=5e-5)
        np.testing.assert_allclose(fused_grad, graph_grad, rtol=1e-4,
                                   atol=1e-5 * np.abs(graph_grad).max())


# --- choosing the path -------------------------------------------------------------------

def _exported_ops(loss_fn, pred, label, tmp_path, **export_args):
    loss_fn.hybridize()
    loss_fn(mx.nd.array(pred), mx.nd.array(label))
    prefix = str(tmp_path / "loss")
    loss_fn.export(prefix, **export_args)
    with open(prefix + "-symbol.json") as handle:
        graph = json.load(handle)
    return prefix, {node["op"] for node in graph["nodes"]}, graph


@needs_fused
def test_cpu_runs_fused_and_says_so_once(tmp_path, caplog):
    caplog.set_level("INFO", logger="gluon_losses")
    fused._state["logged"].clear()
    pred, label, class_weight = random_case((2, 3, 4, 5), 1, seed=3)
    _, ops, graph = _exported_ops(WeightedSoftmaxCELoss(class_weight, axis=1), pred, label,
                                  tmp_path, fused=True)
    assert fused.OP_NAME in ops and "log_softmax" not in ops
    node = next(n for n in graph["nodes"] if n["op"] == fused.OP_NAME)
    assert "import gluon_losses" in node["attrs"]["library"]
    WeightedSoftmaxCELoss(axis=1)(mx.nd.array(pred), mx.nd.array(label))
    lines = [r.getMessage() for r in caplog.records if "WeightedSoftmaxCELoss runs" in r.getMessage()]
    assert lines == ["WeightedSoftmaxCELoss runs on the fused operator %s" % fused.OP_NAME]


def test_fused_false_exports_builtin_operators_only(tmp_path):
    pred, label, class_weight = random_case((2, 3, 4, 5), 1, seed=3)
    _, ops, _ = _exported_ops(WeightedSoftmaxCELoss(class_weight, axis=1, fused=False), pred,
                              label, tmp_path)
    assert fused.OP_NAME not in ops and "log_softmax" in ops


def test_gpu_context_and_unsupported_modes_choose_the_graph():
    loss_fn = WeightedSoftmaxCELoss()
    loss_fn._choose_path(mx.gpu(0))
    assert not loss_fn._use_fused
    for kwargs in (dict(gamma=2.0), dict(sparse_label=False), dict(from_logits=True)):
        loss_fn = WeightedSoftmaxCELoss(**kwargs)
        loss_fn._choose_path(mx.cpu())
        assert not loss_fn._use_fused
    with pytest.raises(ValueError, match="fused=True but the fused operator cannot run: "
                                         "the fused operator has no kernel for gpu"):
        WeightedSoftmaxCELoss(fused=True)._choose_path(mx.gpu(0))


def test_fused_argument_is_checked():
    with pytest.raises(ValueError, match="fused must be None, True or False, got 'yes'"):
        WeightedSoftmaxCELoss(fused="yes")


# --- fresh processes: environment switch, no compiler, cache reuse, export ---------------

def _run_python(code, **env):
    """Output (stderr in it) of ``code`` run with the environment's fused switch removed,
    PYTHONPATH the repository root only, and ``env``; it must exit 0."""
    env = dict({fused.ENV_SWITCH: None, "PYTHONPATH": ROOT}, **env)
    result = run_python(code, 300, stderr=subprocess.STDOUT, **env)
    assert result.returncode == 0, result.stdout
    return result.stdout


PATH_REPORT = """
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(message)s")
    import mxnet as mx
    from gluon_losses import WeightedSoftmaxCELoss, fused
    loss = WeightedSoftmaxCELoss([1.0, 2.0])
    print(loss(mx.nd.array([[1.0, 0.0]]), mx.nd.array([1])).asscalar())
    print("registered", hasattr(mx.nd, fused.OP_NAME))
"""


def test_environment_switch_turns_the_fused_path_off(tmp_path):
    output = _run_python(PATH_REPORT, GLUON_LOSSES_FUSED="0")
    assert "INFO:WeightedSoftmaxCELoss runs on the MXNet-operator graph: GLUON_LOSSES_FUSED=0" in output
    assert "registered False" in output
    np.testing.assert_allclose(float(output.splitlines()[-2]), 2.6265233, rtol=2e-6)


def test_missing_library_falls_back_to_the_graph_with_a_warning(tmp_path):
    output = _run_python(PATH_REPORT, GLUON_LOSSES_LIBRARY=str(tmp_path / "absent.so"))
    # Not asked for: a WARNING with the reason and the fix (PATH_REPORT logs as WARNING:...).
    assert ("WARNING:WeightedSoftmaxCELoss runs on the MXNet-operator graph, not the fused "
            "operator: no fused operator library at %s" % (tmp_path / "absent.so") in output)
    assert "build it with: python -m gluon_losses.fused build" in output
    assert "pass fused=False or set GLUON_LOSSES_FUSED=0" in output
    assert "registered False" in output
    np.testing.assert_allclose(float(output.splitlines()[-2]), 2.6265233, rtol=2e-6)


@needs_fused
def test_library_built_for_another_mxnet_is_refused(tmp_path):
    copy = tmp_path / fused._build.LIBRARY_NAME
    copy.write_bytes(open(fused.library_path(), "rb").read())
    with open(fused._build.stamp_path(str(copy)), "w") as handle:
        json.dump({"mxnet": "1.8.0", "source": fused._build.source_hash()}, handle)
    output = _run_python(PATH_REPORT, GLUON_LOSSES_LIBRARY=str(copy))
    assert ("was built against MXNet 1.8.0, but this is MXNet %s; build it with: "
            "python -m gluon_losses.fused build" % mx.__version__) in output
    assert "registered False" in output


@needs_fused
def test_first_call_in_a_fresh_process_loads_without_compiling(tmp_path):
    output = _run_python("""
    import time
    start = time.perf_counter()
    import mxnet as mx
    imported = time.perf_counter()
    from gluon_losses import WeightedSoftmaxCELoss, fused
    out = WeightedSoftmaxCELoss([1.0, 2.0])(mx.nd.array([[1.0, 0.0]]), mx.nd.array([1]))
    out.wait_to_read()
    print("fused", fused.available(), "seconds %.3f" % (time.perf_counter() - imported))
    """, PATH="/nonexistent")  # no compiler could run even if one were wanted
    words = output.split()
    assert words[words.index("fused") + 1] == "True"
    assert float(words[words.index("seconds") + 1]) < 1.0, output


def test_compiler_from_cxx_is_split_like_a_shell_command(monkeypatch):
    monkeypatch.setenv("CXX", "ccache g++")
    monkeypatch.setattr(fused._build.shutil, "which", lambda name: "/usr/bin/" + name)
    assert fused._build.compiler() == ["ccache", "g++"]
    monkeypatch.setattr(fused._build.shutil, "which", lambda name: None)
    with pytest.raises(fused._build.BuildError, match="CXX='ccache g\\+\\+' does not name "
                                                     "a program on PATH"):
        fused._build.compiler()
    monkeypatch.delenv("CXX")
    with pytest.raises(fused._build.BuildError, match="no C\\+\\+ compiler: CXX is not set "
                                                     "and neither c\\+\\+ nor g\\+\\+"):
        fused._build.compiler()


def test_build_command_builds_a_loadable_stamped_library_and_removes_dead_builds(tmp_path):
    (tmp_path / ".partial-dead.so").write_bytes(b"left by a killed build")
    result = run_python("from gluon_losses.fused.__main__ import main; "
                        "main(['build', '--into', %r])" % str(tmp_path), 300)
    assert result.returncode == 0, result.stderr
    library = str(tmp_path / fused._build.LIBRARY_NAME)
    assert result.stdout.strip() == "built %s" % library
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        [".build.lock", fused._build.LIBRARY_NAME, fused._build.LIBRARY_NAME + ".json"])
    assert fused.library_problem(library) is None


def test_build_without_a_compiler_says_so(tmp_path):
    result = run_python("from gluon_losses.fused.__main__ import main; "
                        "main(['build', '--into', %r])" % str(tmp_path), 120,
                        CXX=None, PATH="/nonexistent")
    assert result.returncode == 1
    assert "gluon_losses.fused build failed: no C++ compiler" in result.stderr


@needs_fused
def test_exported_fused_graph_loads_in_a_fresh_process(tmp_path):
    pred, label, class_weight = random_case((2, 3, 4, 5), 1, seed=4)
    loss_fn = WeightedSoftmaxCELoss(class_weight, axis=1, normalization="weight")
    prefix, ops, _ = _exported_ops(loss_fn, pred, label, tmp_path, fused=True)
    assert fused.OP_NAME in ops
    expected = loss_fn(mx.nd.array(pred), mx.nd.array(label)).asnumpy()
    np.save(str(tmp_path / "pred.npy"), pred)
    np.save(str(tmp_path / "label.npy"), label)
    output = _run_python("""
    import numpy as np, mxnet as mx
    import gluon_losses
    block = mx.gluon.SymbolBlock.imports(%r, ["data0", "data1"], %r)
    out = block(mx.nd.array(np.load(%r)), mx.nd.array(np.load(%r)))
    print(repr(out.asnumpy().tolist()))
    """ % (prefix + "-symbol.json", prefix + "-0000.params", str(tmp_path / "pred.npy"),
           str(tmp_path / "label.npy")))
    np.testing.assert_allclose(eval(output.strip().splitlines()[-1]), expected, rtol=1e-6)


# --- the library's symbols -----------------------------------------------------------------

@needs_fused
def test_library_exports_only_the_loader_entry_points():
    result = subprocess.run(["nm", "-D", "--defined-only", fused.library_path()],
                            stdout=subprocess.PIPE, universal_newlines=True, check=True)
    names = [line.split()[-1] for line in result.stdout.splitlines() if line.strip()]
    assert "initialize" in names and "_opRegSize" in names and "_opCallFCompute" in names
    assert [name for name in names if name != "initialize"
            and not name.startswith(("_op", "_part", "_pass", "_msg"))] == []


@needs_fused
def test_libmxnet_loaded_globally_first_does_not_interpose(tmp_path):
    """What ``import horovod.mxnet`` does before ``import gluon_losses``: libmxnet.so, whose
    own mxnet::ext:: symbols were built with another string ABI, loaded with RTLD_GLOBAL.
    Before the library hid its copies of them, this died with SIGFPE."""
    pred, label, class_weight = random_case((4, 5), -1, seed=5)
    expected = WeightedSoftmaxCELoss(class_weight, fused=False)(
        mx.nd.array(pred), mx.nd.array(label)).asnumpy()
    # onnx (the test extra), which `import mxnet` imports where installed, crashes in its
    # own C extension once libmxnet's bundled protobuf symbols are global: that is
    # onnx's clash, not this library's, so this process runs without onnx, as MXNet
    # allows. (Horovod imports mxnet before it loads its library globally.)
    output = _run_python("""
    import sys
    sys.modules["onnx"] = None
    import ctypes, importlib.util, os
    spec = importlib.util.find_spec("mxnet")
    ctypes.CDLL(os.path.join(os.path.dirname(spec.origin), "libmxnet.so"),
                mode=ctypes.RTLD_GLOBAL)
    import mxnet as mx
    from gluon_losses import WeightedSoftmaxCELoss
    loss = WeightedSoftmaxCELoss(%r, fused=True)
    print(repr(loss(mx.nd.array(%r), mx.nd.array(%r)).asnumpy().tolist()))
    """ % (class_weight.tolist(), pred.tolist(), label.tolist()))
    np.testing.assert_allclose(eval(output.strip().splitlines()[-1]), expected, rtol=1e-5)
