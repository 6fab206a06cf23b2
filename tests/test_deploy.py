"""Exports travel: what ``export()`` writes by default loads and runs in a venv holding only
``mxnet==1.9.1`` and ``numpy<1.24`` (tests/stock_mxnet.py), through ``SymbolBlock.imports``
and through ``mx.sym.load`` + a Module bind, and gives the loss's own output."""
import json
import os

import numpy as np
import pytest
import mxnet as mx

from gluon_losses import CenterLoss, MixWeightedSoftmaxCELoss, WeightedSoftmaxCELoss, fused
from stock_mxnet import run_stock_python

# Runs in the stock venv: loads prefix's graph both ways, feeds inputs.npz, prints both
# outputs (a list of arrays per way) as JSON.
LOAD_BOTH_WAYS = """
import json, sys
import numpy as np, mxnet as mx
prefix, count = sys.argv[1], int(sys.argv[2])
inputs = np.load(prefix + "-inputs.npz")
arrays = [mx.nd.array(inputs["arr_%d" % i]) for i in range(count)]
names = ["data"] if count == 1 else ["data%d" % i for i in range(count)]
block = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", names, prefix + "-0000.params")
by_block = block(*arrays)
by_block = [by_block] if isinstance(by_block, mx.nd.NDArray) else list(by_block)
saved = mx.nd.load(prefix + "-0000.params")
saved = saved if isinstance(saved, dict) else {}  # a graph without parameters saves []
args = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
auxs = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
module = mx.mod.Module(mx.sym.load(prefix + "-symbol.json"), data_names=names, label_names=None)
module.bind([(n, a.shape) for n, a in zip(names, arrays)], for_training=False)
module.set_params(args, auxs)
module.forward(mx.io.DataBatch(arrays), is_train=False)
print(json.dumps({"block": [o.asnumpy().tolist() for o in by_block],
                  "module": [o.asnumpy().tolist() for o in module.get_outputs()]}))
"""


def _cases():
    rng = np.random.RandomState(3)
    pred = rng.randn(2, 3, 4, 4).astype(np.float32)
    label = rng.randint(-1, 3, size=(2, 4, 4)).astype(np.float32)
    weight = rng.rand(2, 4, 4).astype(np.float32)
    features = rng.randn(6, 2).astype(np.float32)
    ids = np.array([0, 1, 1, 2, 0, 2], np.float32)
    return {
        "weighted": (lambda **fused: WeightedSoftmaxCELoss([1.0, 2.0, 0.5], axis=1, **fused),
                     [pred, label]),
        "weighted+sample_weight": (
            lambda **fused: WeightedSoftmaxCELoss([1.0, 2.0, 0.5], axis=1,
                                                  normalization="weight", **fused),
            [pred, label, weight]),
        "unweighted (N, C)": (lambda **fused: WeightedSoftmaxCELoss(label_smoothing=0.1, **fused),
                              [pred[:, :, 0, 0], label[:, 0, 0]]),
        "mix": (lambda **_: MixWeightedSoftmaxCELoss(aux=True, class_weight=[1.0, 2.0, 0.5]),
                [pred, pred[::-1].copy(), label]),
        "center": (lambda **_: CenterLoss(3, 2, weight=0.5), [features, ids]),
    }


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_export_runs_on_stock_mxnet(case, tmp_path):
    make, inputs = CASES[case]

    def run(loss):
        if isinstance(loss, CenterLoss):
            loss.initialize()
            loss.centers.set_data(mx.nd.array([[1, 2], [3, -1], [0.5, 0.5]]))
        loss.hybridize(static_alloc=True)
        out = loss(*[mx.nd.array(a) for a in inputs])
        return loss, [out] if isinstance(out, mx.nd.NDArray) else list(out)

    # The default path (fused where it applies) trains and exports; the export is the
    # MXNet-operator graph, so it gives what fused=False computes.
    loss, _ = run(make())
    _, expected = run(make(fused=False))
    prefix = str(tmp_path / "loss")
    loss.export(prefix)
    with open(prefix + "-symbol.json") as handle:
        ops = {node["op"] for node in json.load(handle)["nodes"]}
    assert fused.OP_NAME not in ops
    np.savez(prefix + "-inputs.npz", *inputs)
    script = tmp_path / "load.py"
    script.write_text(LOAD_BOTH_WAYS)
    result = run_stock_python("import runpy, sys; sys.argv = ['load.py', %r, '%d']; "
                              "runpy.run_path('load.py', run_name='__main__')"
                              % (prefix, len(inputs)), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    for way in ("block", "module"):
        assert len(outputs[way]) == len(expected)
        for got, want in zip(outputs[way], expected):
            np.testing.assert_allclose(np.array(got), want.asnumpy(), rtol=2e-6, atol=1e-6,
                                       err_msg=way)


@pytest.mark.skipif(not fused.available(), reason="fused operator unavailable")
def test_fused_export_is_explicit_and_loads_with_the_library(tmp_path):
    pred, label = CASES["weighted"][1]
    loss = WeightedSoftmaxCELoss([1.0, 2.0, 0.5], axis=1)
    loss.hybridize()
    expected = loss(mx.nd.array(pred), mx.nd.array(label)).asnumpy()
    prefix = str(tmp_path / "fused")
    loss.export(prefix, fused=True)
    with open(prefix + "-symbol.json") as handle:
        assert fused.OP_NAME in {node["op"] for node in json.load(handle)["nodes"]}
    np.savez(prefix + "-inputs.npz", pred, label)
    result = run_stock_python("""
        import numpy as np, mxnet as mx
        mx.library.load(%r, verbose=False)
        inputs = np.load(%r)
        block = mx.gluon.SymbolBlock.imports(%r, ["data0", "data1"], %r)
        print(block(mx.nd.array(inputs["arr_0"]), mx.nd.array(inputs["arr_1"])).asnumpy().tolist())
    """ % (fused.library_path(), prefix + "-inputs.npz", prefix + "-symbol.json",
           prefix + "-0000.params"), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(eval(result.stdout.strip().splitlines()[-1]), expected, rtol=1e-6)


def test_fused_export_of_a_graph_loss_is_refused(tmp_path):
    loss = WeightedSoftmaxCELoss(fused=False)
    loss.hybridize()
    loss(mx.nd.ones((2, 3)), mx.nd.array([0, 1]))
    with pytest.raises(ValueError, match="export\\(fused=True\\) needs a loss whose graph ran"):
        loss.export(str(tmp_path / "x"), fused=True)
    with pytest.raises(ValueError, match="fused must be True or False, got 1"):
        loss.export(str(tmp_path / "x"), fused=1)
