"""WeightedSoftmaxCELoss against PyTorch's cross_entropy, each framework in its own process.

Two frameworks in one process share cores, thread pools and allocators, and either
may slow the other (``--co-resident`` below measures it for PyTorch), so neither
framework is ever imported here: each run is a fresh subprocess, MXNet's
(bench/mxnet_softmax_ce.py, our loss fused and ``fused=False``, and MXNet's floor) and
PyTorch's (bench/torch_softmax_ce.py, in the venv of ``make bench-torch``) alternating
``--repeats`` times, under each thread setting:

- ``default``: no thread variable set; each framework picks its own count;
- ``N``: ``OMP_NUM_THREADS=N`` (and ``MKL_NUM_THREADS=N``) for both,
  ``MXNET_CPU_WORKER_NTHREADS=1`` (MXNet's default: one engine thread runs the
  operators, each with N OpenMP threads) and ``torch.set_num_threads(N)``.

Every process times all of bench/softmax_cases.py's shapes and prints the median per
contender; a table cell is the median of the ``--repeats`` processes, a ratio the
median of the ratios of adjacent MXNet / PyTorch runs, with their range, and also the
ratio of each side's best process (the least disturbed by other work). Both sides
also report the loss with PyTorch's normalization and its gradient's magnitude sum on
the same inputs, and the run stops if they differ: the two solve the same problem.

    python -m bench.bench_vs_torch [--repeats 3] [--rounds 20] [--threads default,1,2]

``--co-resident`` times only PyTorch instead, alternating a process without MXNet and
one that imports MXNet first (``--load-mxnet-from``): what sharing a process costs it.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_PYTHON = os.path.join(ROOT, ".venv-bench", "bin", "python")
# Every variable that sets a thread count of either framework: the default setting
# removes them all, so that neither inherits the caller's.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MXNET_OMP_MAX_THREADS", "MXNET_CPU_WORKER_NTHREADS")
# Float32 on both sides, summed in different orders: far below this, a real difference
# (a wrong weight, a missed ignore) is far above it.
CHECK_RTOL = 1e-4


def parse_threads(text):
    settings = []
    for item in text.split(","):
        item = item.strip()
        if item != "default" and not (item.isdigit() and int(item) >= 1):
            raise argparse.ArgumentTypeError(
                "--threads takes 'default' or counts of at least 1, comma-separated; "
                "got %r in %r" % (item, text))
        settings.append(item)
    return settings


def environment(setting, framework):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if setting != "default":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = setting
        if framework == "mxnet":
            env["MXNET_CPU_WORKER_NTHREADS"] = "1"
    return env


def run_worker(python, framework, setting, rounds, mxnet_path=None):
    """One worker process's JSON; ``mxnet_path``: PyTorch's worker loads MXNet from there."""
    module = {"mxnet": "bench.mxnet_softmax_ce", "torch": "bench.torch_softmax_ce"}[framework]
    command = [python, "-m", module, "--rounds", str(rounds)]
    if framework == "torch" and setting != "default":
        command += ["--threads", setting]
    if mxnet_path:
        command += ["--load-mxnet-from", mxnet_path]
    done = subprocess.run(command, cwd=ROOT, env=environment(setting, framework),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    if done.returncode != 0:
        raise RuntimeError("%s exited with status %d:\n%s" % (
            " ".join(command), done.returncode, done.stderr[-3000:]))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_after"] = os.getloadavg()[0]
    return result


def check_same_problem(mxnet_run, torch_run):
    """Raise unless both frameworks computed the same loss and gradient size."""
    for ours, theirs in zip(mxnet_run["cases"], torch_run["cases"]):
        assert ours["case"] == theirs["case"], (ours["case"], theirs["case"])
        for key in ("loss", "grad_abs_sum"):
            if abs(ours[key] - theirs[key]) > CHECK_RTOL * abs(theirs[key]):
                raise RuntimeError("%s: MXNet's %s is %r, PyTorch's %r: the two sides do "
                                   "not solve the same problem" % (
                                       ours["case"], key, ours[key], theirs[key]))


def summarize(runs):
    """Rows of the table from ``[(mxnet_run, torch_run), ...]`` of one setting."""
    rows = []
    for index, case in enumerate(runs[0][0]["cases"]):
        ms = {key: [m["cases"][index]["ms"][key] for m, _ in runs]
              for key in case["ms"]}
        ms["torch"] = [t["cases"][index]["ms"]["torch"] for _, t in runs]
        ratios = {
            "fused/torch": [f / t for f, t in zip(ms["fused"], ms["torch"])],
            "graph/torch": [g / t for g, t in zip(ms["graph"], ms["torch"])],
            "fused/floor": [f / b for f, b in zip(ms["fused"], ms["floor"])],
        }
        rows.append({"case": case["case"],
                     "ms": {key: statistics.median(v) for key, v in ms.items()},
                     # Other work on the machine only ever adds time: the best process
                     # of each side is the least disturbed estimate of what it costs.
                     "best fused/torch": min(ms["fused"]) / min(ms["torch"]),
                     "ratios": {key: (statistics.median(v), min(v), max(v))
                                for key, v in ratios.items()},
                     "runs_ms": ms})
    return rows


def mxnet_site_packages(mxnet_python):
    """The folder that ``mxnet_python`` imports MXNet from."""
    return subprocess.run(
        [mxnet_python, "-c", "import os, mxnet; print(os.path.dirname(os.path.dirname("
         "os.path.abspath(mxnet.__file__))))"], stdout=subprocess.PIPE, check=True,
        universal_newlines=True).stdout.strip()


def co_resident(args):
    """PyTorch alone against PyTorch with MXNet imported, alternating, per setting."""
    mxnet_path = mxnet_site_packages(args.mxnet_python)
    print("PyTorch's forward+backward, ms: median of %d processes each, alternating "
          "without and with MXNet imported; %d rounds per shape" % (args.repeats,
                                                                     args.rounds))
    print("| shape | threads | PyTorch alone ms | with MXNet imported ms | ratio |")
    print("|---|---|---:|---:|---:|")
    for setting in args.threads:
        runs = []
        for _ in range(args.repeats):
            runs.append((run_worker(args.torch_python, "torch", setting, args.rounds),
                         run_worker(args.torch_python, "torch", setting, args.rounds,
                                    mxnet_path)))
        for index, case in enumerate(runs[0][0]["cases"]):
            alone = statistics.median(a["cases"][index]["ms"]["torch"] for a, _ in runs)
            loaded = statistics.median(b["cases"][index]["ms"]["torch"] for _, b in runs)
            print("| %s | %s (PyTorch: %d) | %.3f | %.3f | %.2f |" % (
                case["case"], setting, runs[0][0]["threads"], alone, loaded, loaded / alone))


def ratio_cell(ratio):
    median, low, high = ratio
    return "%.2f (%.2f-%.2f)" % (median, low, high) if high > low else "%.2f" % median


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return "%d vCPU %s, %s" % (os.cpu_count() or 0, model, platform.platform())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="MXNet / PyTorch process pairs per thread setting")
    parser.add_argument("--rounds", type=int, default=20,
                        help="interleaved rounds per shape inside each process")
    parser.add_argument("--threads", type=parse_threads, default=["default", "1", "2"])
    parser.add_argument("--torch-python",
                        default=os.environ.get("BENCH_TORCH_PYTHON", DEFAULT_TORCH_PYTHON),
                        help="the Python of a venv with torch and NumPy (make bench-torch)")
    parser.add_argument("--mxnet-python", default=sys.executable)
    parser.add_argument("--json", help="also write every run's numbers to this file")
    parser.add_argument("--co-resident", action="store_true",
                        help="time PyTorch alone against PyTorch with MXNet imported")
    args = parser.parse_args(argv)
    for name in ("repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error("--%s must be at least 1, got %d" % (name, getattr(args, name)))
    if not os.path.exists(args.torch_python):
        parser.error("no PyTorch Python at --torch-python %s; make one with `make bench-torch`"
                     % args.torch_python)
    if args.co_resident:
        return co_resident(args)

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()[0]
    settings = {}
    for setting in args.threads:
        runs = []
        for _ in range(args.repeats):  # alternating: MXNet, PyTorch, MXNet, ...
            mxnet_run = run_worker(args.mxnet_python, "mxnet", setting, args.rounds)
            torch_run = run_worker(args.torch_python, "torch", setting, args.rounds)
            check_same_problem(mxnet_run, torch_run)
            runs.append((mxnet_run, torch_run))
        settings[setting] = {"runs": runs, "rows": summarize(runs)}
    finished = datetime.datetime.now(datetime.timezone.utc)

    first = settings[args.threads[0]]["runs"][0]
    print("%s to %s UTC; %s" % (started.strftime("%Y-%m-%d %H:%M"),
                                finished.strftime("%H:%M"), machine()))
    print("MXNet %s, PyTorch %s; %d alternating process pairs per setting, %d rounds per "
          "shape in each; 1-minute load average %.2f before, %s after each run" % (
              first[0]["version"], first[1]["version"], args.repeats, args.rounds,
              load_before, "/".join("%.1f" % run["load_after"]
                                    for s in settings.values()
                                    for pair in s["runs"] for run in pair)))
    print("ms: median of the processes' medians; ratios: median (range) over the pairs; "
          "best: each side's fastest process")
    print("| shape | threads | fused ms | fused=False ms | PyTorch ms | fused / PyTorch "
          "| best fused / best PyTorch | fused=False / PyTorch | MXNet floor ms "
          "| fused / floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for index in range(len(first[0]["cases"])):
        for setting, result in settings.items():
            row = result["rows"][index]
            torch_threads = sorted({pair[1]["threads"] for pair in result["runs"]})
            threads = ("default (PyTorch: %s)" % "/".join(map(str, torch_threads))
                       if setting == "default" else setting)
            ms, ratios = row["ms"], row["ratios"]
            print("| %s | %s | %.3f | %.3f | %.3f | %s | %.2f | %s | %.3f | %s |" % (
                row["case"], threads, ms["fused"], ms["graph"], ms["torch"],
                ratio_cell(ratios["fused/torch"]), row["best fused/torch"],
                ratio_cell(ratios["graph/torch"]),
                ms["floor"], ratio_cell(ratios["fused/floor"])))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"started": started.isoformat(), "machine": machine(),
                       "settings": settings}, out, indent=1)
    return settings


if __name__ == "__main__":
    main()
