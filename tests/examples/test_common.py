"""examples/common.py: shared flags, the resume rule, seeding, lr schedule, checkpoints."""
import argparse
import os
import random
import re

import numpy as np
import mxnet as mx
import pytest
from mxnet import gluon

from examples import common


def parser_with(**defaults):
    parser = argparse.ArgumentParser()
    parser.add_argument("--lambda", dest="lam", type=float, default=0.01)
    parser.add_argument("--data-dir", default=None)
    common.add_common_arguments(parser, **defaults)
    return parser


def test_shared_flags_and_example_defaults():
    args = common.parse_args(parser_with(lr=0.003, batch_size=64), [])
    assert args.lr == 0.003 and args.batch_size == 64 and args.hybridize is True
    assert {k: getattr(args, k) for k in common.COMMON_DEFAULTS if k not in ("lr", "batch_size")} \
        == {k: v for k, v in common.COMMON_DEFAULTS.items() if k not in ("lr", "batch_size")}
    args = common.parse_args(parser_with(), ["--no-hybridize", "--class-weighting", "effective",
                                             "--lr-decay-epochs", "3,5", "--max-iters", "7"])
    assert (args.hybridize, args.class_weighting, args.lr_decay_epochs, args.max_iters) == \
        (False, "effective", "3,5", 7)
    with pytest.raises(ValueError, match="lr_steps"):
        common.add_common_arguments(argparse.ArgumentParser(), lr_steps="1")
    with pytest.raises(SystemExit):
        parser_with().parse_args(["--class-weighting", "auto"])


def test_resume_takes_saved_flags_and_refuses_changed_experiment(tmp_path, capsys):
    run = tmp_path / "run"
    saved = vars(common.parse_args(parser_with(), ["--out", str(run), "--lambda", "0.5",
                                                   "--lr", "0.1", "--epochs", "2"]))
    common.write_json(str(run / common.ARGS), saved)
    # flags not given come from args.json (not from the defaults); runtime flags may change
    resumed = common.parse_args(parser_with(), ["--resume", str(run), "--epochs", "5",
                                                "--data-dir", "elsewhere"],
                                runtime=common.RUNTIME_FLAGS + ("data_dir",))
    assert (resumed.lam, resumed.lr, resumed.epochs, resumed.out, resumed.data_dir) == \
        (0.5, 0.1, 5, str(run), "elsewhere")
    # giving the saved value again is no change
    assert common.parse_args(parser_with(), ["--resume", str(run), "--lr", "0.1"]).lr == 0.1
    with pytest.raises(SystemExit):
        common.parse_args(parser_with(), ["--resume", str(run), "--lambda", "0.25",
                                          "--wd", "0.1", "--epochs", "9"])
    message = capsys.readouterr().err.splitlines()[-1]
    assert "--lambda 0.25 (saved: 0.5)" in message and "--wd 0.1 (saved: 0.0)" in message
    assert "--epochs" not in message
    with pytest.raises(SystemExit):
        common.parse_args(parser_with(), ["--resume", str(tmp_path / "nothing")])
    assert "no args.json" in capsys.readouterr().err


def test_set_seed_seeds_python_numpy_and_mxnet_like_their_own_seed_calls():
    def draw():
        return (random.random(), np.random.rand(3).tolist(),
                mx.nd.random.uniform(shape=(3,)).asnumpy().tolist())
    common.set_seed(11)
    ours = draw()
    random.seed(11)
    np.random.seed(11)
    mx.random.seed(11)
    assert draw() == ours
    common.set_seed(12)
    assert draw() != ours


def test_lr_scheduler_drops_after_the_given_epochs_and_resumes_exactly(tmp_path):
    iters, lr = 5, 0.003
    # lr of each update of epochs 1..6 with drops after epochs 2 and 4
    expected = [lr * 0.1 ** sum(e > s for s in (2, 4)) for e in range(1, 7) for _ in range(iters)]
    sched = common.lr_scheduler(lr, 0.1, "2,4", iters)
    got = [sched(n) for n in range(1, 6 * iters + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert common.lr_scheduler(lr, 0.1, "", iters) is None
    with pytest.raises(ValueError, match="increase"):
        common.lr_scheduler(lr, 0.1, "4,2", iters)
    # through a Trainer: the schedule is restored with the optimizer states
    def make():
        net = gluon.nn.Dense(1, in_units=1)
        net.initialize(mx.init.One())
        return net, gluon.Trainer(net.collect_params(), "sgd", {
            "learning_rate": lr, "lr_scheduler": common.lr_scheduler(lr, 0.1, "1", 2)})
    net, trainer = make()
    for _ in range(3):
        with mx.autograd.record():
            net(mx.nd.ones((1, 1))).backward()
        trainer.step(1)
    trainer.save_states(str(tmp_path / "t.states"))
    _, restored = make()
    restored.load_states(str(tmp_path / "t.states"))
    assert restored.learning_rate == pytest.approx(lr * 0.1, rel=1e-12)


def test_lr_scheduler_warms_up_linearly_then_drops():
    lr, warmup, iters = 0.02, 5, 4

    def expected(update):  # update 1 = the first update of epoch 1
        epochs_done = (update - 1) // iters
        return lr * 0.1 ** sum(epochs_done >= e for e in (2, 3)) * min(1.0, update / warmup)

    updates = range(1, 5 * iters + 1)
    sched = common.lr_scheduler(lr, 0.1, "2,3", iters, warmup_iters=warmup)
    np.testing.assert_allclose([sched(u) for u in updates], [expected(u) for u in updates],
                               rtol=1e-12)
    no_drop = common.lr_scheduler(lr, 0.1, "", iters, warmup_iters=warmup)
    np.testing.assert_allclose([no_drop(u) for u in updates],
                               [lr * min(1.0, u / warmup) for u in updates], rtol=1e-12)


def test_class_weight_vector_dispatches_to_gluon_losses():
    from gluon_losses import class_weights as cw
    counts = [100, 10, 1]
    assert common.class_weight_vector("none", counts) is None
    np.testing.assert_array_equal(common.class_weight_vector("inverse", counts),
                                  np.float32(cw.inverse_frequency(counts)))
    np.testing.assert_array_equal(common.class_weight_vector("effective", counts, beta=0.9),
                                  np.float32(cw.effective_number(counts, beta=0.9)))
    with pytest.raises(ValueError, match="'auto'"):
        common.class_weight_vector("auto", counts)


def test_checkpoints_keep_only_the_newest_epoch_and_restore_it(tmp_path):
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    (tmp_path / "other-0001.params").write_text("not ours")
    for epoch in (1, 2):
        common.save_checkpoint(str(tmp_path), epoch, {"net": net}, {"opt": trainer},
                               meta={"history": [epoch]})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", "net-0002.params",
                                            "opt-0002.states", "other-0001.params"]
    saved = net.weight.data().asnumpy()
    net.weight.set_data(mx.nd.zeros((2, 3)))
    record = common.load_checkpoint(str(tmp_path), {"net": net}, {"opt": trainer}, mx.cpu())
    assert record["epoch"] == 2 and record["history"] == [2]
    np.testing.assert_array_equal(net.weight.data().asnumpy(), saved)


@pytest.mark.parametrize("quiet", [False, True])
def test_logger_console_through_tqdm_and_quiet(tmp_path, capfd, quiet):
    log = common.get_logger(str(tmp_path), quiet=quiet, name="test_common_%s" % quiet)
    from tqdm import tqdm
    with common.console_through_tqdm(log):
        with tqdm(total=2, disable=quiet) as bar:
            log.info("halfway %d", 1)
            bar.update(2)
    err = capfd.readouterr().err
    assert ("halfway 1" in err) is not quiet
    assert "halfway 1" in (tmp_path / "train.log").read_text()
    if not quiet:
        # printed through tqdm.write, with the file handler's time stamp format
        line = [line for line in err.splitlines() if "halfway 1" in line][0]
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ halfway 1$", line), line


def test_stall_watchdog_watches_only_distributed_runs_with_a_timeout():
    for distributed, timeout in ((False, 600.0), (True, 0)):
        watchdog = common.stall_watchdog(distributed, timeout, "the device kvstore", "runs/x")
        assert watchdog.timeout is None and watchdog._thread is None
        watchdog.stop()
    watchdog = common.stall_watchdog(True, 600.0, "the dist_sync kvstore", "runs/x")
    try:
        assert watchdog.timeout == 600.0 and watchdog._thread.is_alive()
        watchdog.beat("epoch 2, batch 3/10")
        message = watchdog.message(601)
        assert "in the dist_sync kvstore, at epoch 2, batch 3/10" in message
        assert "relaunch every process with --resume runs/x" in message
    finally:
        watchdog.watch_exit = False
        watchdog.stop()
    assert watchdog._thread is None
