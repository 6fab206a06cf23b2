"""Timing shared by the benches: one timed call, and contenders taking turns.

MXNet is imported only inside ``timed``: the PyTorch worker (bench/torch_softmax_ce.py)
takes turns with ``interleave`` too, and must not load MXNet's thread pools.
"""
import time


def timed(fn):
    """Seconds that ``fn()`` takes, every MXNet operation it queued included."""
    import mxnet as mx

    start = time.perf_counter()
    fn()
    mx.nd.waitall()
    return time.perf_counter() - start


def forward_backward_seconds(block, pred, label):
    """Seconds of one forward + backward of ``block(pred, label)`` into ``pred``'s
    gradient buffer, which is attached once and overwritten every step, as a training
    loop's are (attach_grad fills a new buffer with zeros, a pass no training step
    makes)."""
    from mxnet import autograd

    start = time.perf_counter()
    with autograd.record():
        loss = block(pred, label)
    loss.backward()
    pred.grad.wait_to_read()
    return time.perf_counter() - start


def interleave(timed_calls, rounds, warmup_rounds=0, block=1, warmup_seconds=0.0,
               alternate=False):
    """Run ``timed_calls`` ({name: callable returning seconds}) in turns.

    Interleaving makes drift in machine load hit every contender alike. The first
    ``warmup_rounds`` rounds make one discarded call per contender (graph building,
    allocation). Each of the ``rounds`` that follow gives every contender a turn:
    discarded calls for at least ``warmup_seconds`` (at least one when positive),
    then ``block`` kept ones. ``alternate`` reverses the order every other round
    (ABBA), counting the warm-up rounds.

    Returns ``{name: {"turns": [[seconds of each kept call] per round],
    "firsts": [seconds of the first call of each turn]}}``.
    """
    names = list(timed_calls)
    result = {name: {"turns": [], "firsts": []} for name in names}
    for index in range(warmup_rounds + rounds):
        order = names[::-1] if alternate and index % 2 else names
        for name in order:
            call = timed_calls[name]
            if index < warmup_rounds:
                call()
                continue
            warm = []
            while warmup_seconds > 0 and (not warm or sum(warm) < warmup_seconds):
                warm.append(call())
            turn = [call() for _ in range(block)]
            result[name]["turns"].append(turn)
            result[name]["firsts"].append((warm or turn)[0])
    return result
