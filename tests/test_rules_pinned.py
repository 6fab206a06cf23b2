"""Each rule of the softmax loss has one definition; the fused operator's C++ copy of a
rule is pinned to it here, so that a change to either alone fails.

- normalizations: ``softmax_ce.NORMALIZATIONS`` against the operator's table and its
  refusal of anything else;
- the label rule: which labels are classes, ignored or bad, decided by
  ``softmax_ce.position_weights`` (graph) and by the operator alike, for every kind of
  ignore label.
"""
import os
import re

import numpy as np
import mxnet as mx
import pytest

from gluon_losses import WeightedSoftmaxCELoss, fused
from gluon_losses.softmax_ce import NORMALIZATIONS
from reference import run_loss

SOURCE = os.path.join(os.path.dirname(fused.__file__), "softmax_ce.cc")
needs_fused = pytest.mark.skipif(not fused.available(), reason="fused operator unavailable: %s"
                                 % fused.unavailable_reason())


def test_operator_source_lists_the_python_normalizations_in_order():
    text = open(SOURCE).read()
    table = re.search(r"kNormalizations\[\]\s*=\s*\{([^}]*)\}", text)
    assert table, "softmax_ce.cc no longer has its kNormalizations table"
    assert tuple(re.findall(r'"([^"]+)"', table.group(1))) == NORMALIZATIONS
    # the enum the table indexes has one member per name, in the same order
    enum = re.search(r"enum\s+Normalization\s*\{([^}]*)\}", text)
    assert enum and len([m for m in enum.group(1).split(",") if m.strip()]) == len(NORMALIZATIONS)


def _fused_call(normalization):
    pred = mx.nd.array(np.random.RandomState(0).randn(3, 4))
    label = mx.nd.array([0, 1, 3])
    return fused.softmax_ce(mx.nd, pred, label, normalization=normalization)


@needs_fused
def test_operator_accepts_every_python_normalization_and_refuses_others():
    for normalization in NORMALIZATIONS:
        loss = WeightedSoftmaxCELoss(normalization=normalization, fused=True)
        graph = WeightedSoftmaxCELoss(normalization=normalization, fused=False)
        pred = mx.nd.array(np.random.RandomState(1).randn(5, 4))
        label = mx.nd.array([0, 1, 3, -1, 2])
        np.testing.assert_allclose(loss(pred, label).asnumpy(), graph(pred, label).asnumpy(),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(mx.base.MXNetError, match="unknown normalization 'mean'"):
        _fused_call("mean").wait_to_read()


LABELS = np.array([-300, -4, -3, -2, -1, 0, 1, 2, 3, 4, 255, 0.5, 2.5, np.nan], np.float32)


@needs_fused
@pytest.mark.parametrize("ignore_label", [None, -1, -3, 0, 2, 255])
def test_operator_and_graph_agree_on_which_labels_are_classes_ignored_or_bad(ignore_label):
    pred = np.random.RandomState(2).randn(LABELS.size, 4).astype(np.float32)
    results = []
    for use_fused in (True, False):
        loss = WeightedSoftmaxCELoss(class_weight=[1.0, 2.0, 3.0, 0.5], ignore_label=ignore_label,
                                     normalization="none", fused=use_fused)
        loss.hybridize()  # imperative calls raise for a bad label before either path
        results.append(run_loss(loss, pred, LABELS))
    (fused_value, fused_grad), (graph_value, graph_grad) = results
    bad = np.isnan(graph_value)
    np.testing.assert_array_equal(np.isnan(fused_value), bad)
    np.testing.assert_array_equal(np.isnan(fused_grad).any(axis=1), bad)
    ignored = ~bad & (graph_value == 0) & (graph_grad == 0).all(axis=1)
    np.testing.assert_array_equal(~bad & (fused_value == 0) & (fused_grad == 0).all(axis=1),
                                  ignored)
    # the rule itself: integers in [0, 4) are classes, the ignore label is ignored, and
    # everything else (-1 included, unless it is the ignore label) is bad
    classes = np.isin(LABELS, [0, 1, 2, 3]) & (LABELS != ignore_label)
    np.testing.assert_array_equal(ignored, LABELS == ignore_label)
    np.testing.assert_array_equal(bad, ~classes & (LABELS != ignore_label))
    np.testing.assert_allclose(fused_value[classes], graph_value[classes], rtol=1e-5)
