"""The fused library beside Horovod: ``import horovod.mxnet`` before or after
``import gluon_losses`` on the fused path (the default), then a fused loss call, and
the Horovod runs of ``test_horovod.py`` on the fused path.

horovod.mxnet loads its library with RTLD_GLOBAL, which puts libmxnet's symbols in the
global scope; the fused library must still bind to its own ``mxnet::ext`` code.
"""
import numpy as np
import pytest

import test_horovod as horovod_tests
from horovod_cluster import run_worker, skip_unless_horovod
from loopback_cluster import run_python

pytestmark = skip_unless_horovod()

FUSED_CALL = """
import numpy as np
import mxnet as mx
from mxnet import autograd
from gluon_losses import WeightedSoftmaxCELoss, fused
assert fused.available(), fused.unavailable_reason()
pred = mx.nd.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
pred.attach_grad()
loss = WeightedSoftmaxCELoss(class_weight=[1.0, 2.0, 0.5], fused=True)
with autograd.record():
    value = loss(pred, mx.nd.array([0, 1]))
value.backward()
log_p = pred.asnumpy() - np.log(np.exp(pred.asnumpy()).sum(axis=1, keepdims=True))
expected = -np.array([1.0 * log_p[0, 0], 2.0 * log_p[1, 1]])  # 'valid': one label each
np.testing.assert_allclose(value.asnumpy(), expected, rtol=1e-5)
print("fused call ok")
"""


@pytest.mark.parametrize("first, second", [("horovod.mxnet", "gluon_losses"),
                                           ("gluon_losses", "horovod.mxnet")])
def test_import_order_does_not_matter_on_the_fused_path(first, second):
    code = "import %s\nimport %s\n" % (first, second) + FUSED_CALL
    done = run_python(code, timeout=120, GLUON_LOSSES_FUSED=None)
    assert done.returncode == 0, "exit %d\n%s\n%s" % (done.returncode, done.stdout[-2000:],
                                                       done.stderr[-3000:])
    assert "fused call ok" in done.stdout


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("horovod_fused")
    run_worker(out, fused=True)
    return out


@pytest.mark.parametrize("name", ["dense_100k", "sparse_100k"])
def test_center_loss_on_horovod_on_the_fused_path(fused_run, name):
    horovod_tests.check_centers_are_eq4_on_every_rank(fused_run, name)


def test_weighted_softmax_ce_under_distributed_trainer_on_the_fused_path(fused_run):
    horovod_tests.check_softmax_trainer_equals_one_process(fused_run)
