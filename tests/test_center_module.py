"""with_center_update under Module: every other parameter trains exactly as the named
optimizer trains it (lr_mult, wd_mult, the bias/gamma/beta weight-decay rules), the
centers follow Eq. 4, and kvstore None on several devices is refused."""
import numpy as np
import pytest
import mxnet as mx

from gluon_losses.symbol import center_loss, center_state_name, with_center_update
from reference import eq4_reference
from test_symbol import device_copies, step

K, D, BATCH, ALPHA, SEED = 5, 3, 12, 0.5, 11
STATE = center_state_name("center")
CONTEXTS = [mx.cpu(0), mx.cpu(1)]
SETTINGS = {
    "sgd": dict(learning_rate=0.1, momentum=0.9, wd=0.01),
    "nag": dict(learning_rate=0.1, momentum=0.9, wd=0.01),
    "adam": dict(learning_rate=0.01, wd=0.01),
}


def network(cut_features=False):
    """A bias, a BatchNorm gamma/beta, an lr_mult=0 and a wd_mult=0 variable, and a
    center loss on the BatchNorm output (the features). With ``cut_features``, the
    center loss sends no gradient into the features: the other parameters then do not
    depend on where the centers are."""
    data, label = mx.sym.var("data"), mx.sym.var("softmax_label")
    hidden = mx.sym.FullyConnected(data, num_hidden=D, name="fc1")          # fc1_bias
    features = mx.sym.BatchNorm(hidden, fix_gamma=False, name="bn")         # bn_gamma, bn_beta
    frozen = mx.sym.var("frozen_weight", lr_mult=0)
    plain = mx.sym.var("nodecay_weight", wd_mult=0)
    mixed = mx.sym.FullyConnected(features, weight=frozen, num_hidden=D, no_bias=True,
                                  name="frozen") + features
    logits = mx.sym.FullyConnected(mixed, weight=plain, num_hidden=K, name="cls")
    return mx.sym.Group([mx.sym.SoftmaxOutput(logits, label, name="softmax"),
                         center_loss(mx.sym.BlockGrad(features) if cut_features else features,
                                     label, K, D, alpha=ALPHA, weight=0.1)])


def initial_params():
    rng = np.random.RandomState(SEED)
    return {"fc1_weight": mx.nd.array(rng.randn(D, 4)), "fc1_bias": mx.nd.array(rng.randn(D)),
            "bn_gamma": mx.nd.array(1 + 0.1 * rng.randn(D)),
            "bn_beta": mx.nd.array(rng.randn(D)),
            "frozen_weight": mx.nd.array(rng.randn(D, D)),
            "nodecay_weight": mx.nd.array(rng.randn(K, D)), "cls_bias": mx.nd.zeros((K,)),
            STATE: mx.nd.zeros((K, D, 2))}


def batches(count=3):
    rng = np.random.RandomState(SEED + 1)
    return [(rng.randn(BATCH, 4).astype(np.float32),
             rng.randint(0, K, size=BATCH).astype(np.float32)) for _ in range(count)]


def bound_module(contexts=CONTEXTS):
    mod = mx.mod.Module(network(), context=contexts)
    mod.bind(data_shapes=[("data", (BATCH, 4))], label_shapes=[("softmax_label", (BATCH,))])
    mod.init_params(arg_params=initial_params(), aux_params={
        "bn_moving_mean": mx.nd.zeros((D,)), "bn_moving_var": mx.nd.ones((D,))})
    return mod


def features_of(mod, x):
    """The center loss's input (BatchNorm's output in training mode) on each device's part."""
    internals = mod.symbol.get_internals()["bn_output"]
    execs = mod._exec_group.execs
    outputs = []
    for executor, part in zip(execs, np.split(np.arange(BATCH), len(execs))):
        here = {name: array.copyto(mx.cpu()) for name, array in
                dict(executor.arg_dict, **executor.aux_dict).items()}
        bound = internals.bind(mx.cpu(), {name: here[name] for name in
                                          internals.list_arguments() if name != "data"}
                               | {"data": mx.nd.array(x[part])},
                               aux_states={name: here[name]
                                           for name in internals.list_auxiliary_states()})
        outputs.append(bound.forward(is_train=True)[0].asnumpy())
    return np.concatenate(outputs).astype(np.float64)


def overwrite_state(mod, value):
    """Write ``value`` into every copy of the center state of ``mod``, the kvstore's too.

    The named optimizer leaves the state alone (lr_mult=0); given the centers that
    with_center_update computed, its network sees the same feature gradients, so every
    other parameter can be compared bitwise over several steps.
    """
    for executor in mod._exec_group.execs:
        executor.arg_dict[STATE][:] = value
    if mod._update_on_kvstore:
        kvstore = mod._kvstore
        updater = kvstore._updater
        kvstore._set_updater(lambda key, new, stored: new.copyto(stored))
        kvstore.push(STATE, mx.nd.array(value))
        kvstore._set_updater(updater)


@pytest.mark.parametrize("kvstore, on_kvstore", [("device", "1"), ("local", "0")])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_other_parameters_train_bitwise_as_the_named_optimizer(monkeypatch, name, kvstore,
                                                               on_kvstore):
    monkeypatch.setenv("MXNET_UPDATE_ON_KVSTORE", on_kvstore)
    named, wrapped = bound_module(), bound_module()
    named.init_optimizer(kvstore=kvstore, optimizer=name, optimizer_params=SETTINGS[name])
    wrapped.init_optimizer(kvstore=kvstore, optimizer=with_center_update(name, **SETTINGS[name]))
    assert wrapped._update_on_kvstore == (on_kvstore == "1")
    centers = np.zeros((K, D))
    for x, y in batches():
        features = features_of(wrapped, x)
        overwrite_state(named, device_copies(wrapped, STATE)[0])
        step(named, x, y)
        step(wrapped, x, y)
        centers = eq4_reference(centers, features, y, ALPHA)
        for param in named._param_names:
            if param == STATE:
                continue
            for plain, ours in zip(device_copies(named, param), device_copies(wrapped, param)):
                np.testing.assert_array_equal(ours, plain, err_msg=param)
        first, second = device_copies(wrapped, STATE)
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first[..., 0], centers, rtol=1e-5, atol=1e-6)
    # The rules the named path applies did apply: the frozen variable never moved.
    np.testing.assert_array_equal(device_copies(wrapped, "frozen_weight")[0],
                                  initial_params()["frozen_weight"].asnumpy())


def test_weight_decay_rules_are_the_named_optimizers():
    mod = bound_module()
    mod.init_optimizer(kvstore="device", optimizer=with_center_update("sgd", wd=0.1))
    rules = mod._optimizer
    assert rules.wd_mult["fc1_bias"] == 0 and rules.wd_mult["bn_beta"] == 0
    assert rules.wd_mult["nodecay_weight"] == 0 and rules.lr_mult["frozen_weight"] == 0
    assert "fc1_weight" not in rules.wd_mult and "bn_gamma" not in rules.wd_mult
    assert rules.rescale_grad == 1.0 / BATCH   # set by Module, as for a name


def test_every_registered_optimizer_gets_the_named_rules():
    symbol = network()
    idx2name = dict(enumerate(symbol.list_arguments()))
    tried = 0
    for name in sorted(mx.optimizer.Optimizer.opt_registry):
        if name.startswith("center_update_"):
            continue
        try:
            plain = mx.optimizer.create(name, sym=symbol, param_idx2name=idx2name, wd=0.01)
        except Exception:   # needs arguments of its own (a base class, for instance)
            continue
        ours = mx.optimizer.create(with_center_update(name, wd=0.01), sym=symbol,
                                   param_idx2name=idx2name)
        assert isinstance(ours, type(plain)), name
        assert (ours.lr_mult, ours.wd_mult, ours.wd, ours.lr) == \
            (plain.lr_mult, plain.wd_mult, plain.wd, plain.lr), name
        tried += 1
    assert tried >= 10


def test_one_name_per_optimizer_and_settings():
    assert with_center_update("sgd", momentum=0.9) == with_center_update("SGD", momentum=0.9)
    assert with_center_update("sgd", momentum=0.9) != with_center_update("sgd", momentum=0.5)
    assert with_center_update("sgd") != with_center_update("nag")
    # Settings added to a with_center_update name keep the first ones.
    both = mx.optimizer.create(with_center_update(with_center_update("sgd", momentum=0.9),
                                                  wd=0.5))
    assert (both.momentum, both.wd) == (0.9, 0.5)


def test_fit_optimizer_params_apply_unless_they_contradict():
    name = with_center_update("sgd", learning_rate=0.3)
    # Module's default learning rate does not override the one given here.
    assert mx.optimizer.create(name, learning_rate=0.01, rescale_grad=0.5).lr == 0.3
    made = mx.optimizer.create(name, momentum=0.9)
    assert (made.lr, made.momentum) == (0.3, 0.9)
    with pytest.raises(ValueError, match="learning_rate=0.5.*one place"):
        mx.optimizer.create(name, learning_rate=0.5)


def test_kvstore_none_on_two_devices_raises_naming_kvstore():
    mod = bound_module()
    mod.init_optimizer(kvstore=None, optimizer=with_center_update("sgd"))
    x, y = batches(1)[0]
    mod.forward_backward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)]))
    with pytest.raises(ValueError, match="kvstore=None with 2 devices.*kvstore='device'"):
        mod.update()


@pytest.mark.parametrize("kvstore, contexts", [("none", CONTEXTS), (None, [mx.cpu(0)])])
def test_kvstore_none_string_and_one_device_follow_eq4(kvstore, contexts):
    mod = bound_module(contexts)
    mod.init_optimizer(kvstore=kvstore, optimizer=with_center_update("sgd"))
    centers = np.zeros((K, D))
    for x, y in batches():
        features = features_of(mod, x)
        step(mod, x, y)
        centers = eq4_reference(centers, features, y, ALPHA)
        for copy in device_copies(mod, STATE):
            np.testing.assert_allclose(copy[..., 0], centers, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ resume
EPOCH_BATCHES, EPOCHS, RESUME_AT = 3, 3, 2


def train_iter():
    x, y = (np.concatenate(parts) for parts in zip(*batches(EPOCH_BATCHES)))
    return mx.io.NDArrayIter(x, y, batch_size=BATCH)


def fit_flow(prefix, optimizer, optimizer_params, stop=EPOCHS, begin=0, resume=False):
    """fit to ``stop`` epochs (checkpointing every epoch), or resume at ``begin``."""
    if resume:
        mod = mx.mod.Module.load(prefix, begin, load_optimizer_states=True, context=CONTEXTS)
    else:
        mod = mx.mod.Module(network(cut_features=True), context=CONTEXTS)
    mod.fit(train_iter(), num_epoch=stop, begin_epoch=begin, kvstore="device",
            eval_metric=mx.metric.Accuracy(output_names=["softmax_output"]),
            optimizer=optimizer, optimizer_params=optimizer_params,
            arg_params=None if resume else initial_params(),
            aux_params=None if resume else {"bn_moving_mean": mx.nd.zeros((D,)),
                                            "bn_moving_var": mx.nd.ones((D,))},
            epoch_end_callback=lambda epoch, *_: mod.save_checkpoint(
                prefix, epoch + 1, save_optimizer_states=True))
    return mod


def scheduler():
    return mx.lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.1)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_module_load_and_fit_resume_bitwise_as_the_named_optimizer(tmp_path, name):
    settings = dict(SETTINGS[name], lr_scheduler=None)
    resumed = {}
    for flow in ("named", "ours"):
        params = dict(settings, lr_scheduler=scheduler())
        if flow == "named":
            optimizer, optimizer_params = name, params
        else:
            optimizer, optimizer_params = with_center_update(name, **params), ()
        prefix = str(tmp_path / flow)
        fit_flow(prefix, optimizer, optimizer_params, stop=RESUME_AT)
        resumed[flow] = fit_flow(prefix, optimizer, optimizer_params, begin=RESUME_AT,
                                 resume=True)
    named, ours = (resumed[flow].get_params()[0] for flow in ("named", "ours"))
    for param in named:
        if param != STATE:
            np.testing.assert_array_equal(ours[param].asnumpy(), named[param].asnumpy(),
                                          err_msg=param)
    state = ours[STATE].asnumpy()
    assert state[:, 0, 1].sum() == EPOCHS * EPOCH_BATCHES * BATCH


def test_resume_with_begin_num_update_continues_the_schedule_bitwise(tmp_path):
    """The recipe of docs/module_api.md: the resumed run is the uninterrupted one."""
    def optimizer(begin_num_update=0):
        return with_center_update("sgd", momentum=0.9, wd=0.01, lr_scheduler=scheduler(),
                                  begin_num_update=begin_num_update)
    whole = fit_flow(str(tmp_path / "whole"), optimizer(), ())
    prefix = str(tmp_path / "parts")
    fit_flow(prefix, optimizer(), (), stop=RESUME_AT)
    resumed = fit_flow(prefix, optimizer(RESUME_AT * EPOCH_BATCHES), (), begin=RESUME_AT,
                       resume=True)
    assert resumed._optimizer.learning_rate == whole._optimizer.learning_rate == 0.1 * 0.5 ** 4
    expected = whole.get_params()[0]
    for param, value in resumed.get_params()[0].items():
        np.testing.assert_array_equal(value.asnumpy(), expected[param].asnumpy(), err_msg=param)
    # Without begin_num_update the schedule restarts: the runs part.
    restarted = fit_flow(prefix, optimizer(), (), begin=RESUME_AT, resume=True)
    assert restarted._optimizer.learning_rate == 0.1 * 0.5 ** 1
