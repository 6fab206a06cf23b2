"""Per-class AP / mAP table (Markdown) and mAP curves of finished training runs.

    python -m examples.faster_rcnn.summarize RUN_DIR... [--plot PNG]

Each RUN_DIR is a training ``--out`` folder holding ``results.json``. Runs that differ
only in ``--seed`` form one configuration; its mean over seeds gets a row of its own.
"""
import os

import numpy as np

from examples import common


def load_runs(run_dirs):
    """``[(run_dir, results.json contents)]``."""
    return [(run, common.read_json(os.path.join(run, "results.json"))) for run in run_dirs]


def loss_label(config):
    """How a run's RCNN classification loss is named in the table and the plot."""
    if config["rcnn_cls_loss"] == "softmax":
        return "softmax (unweighted)"
    beta = " beta=%g" % config["beta"] if config["class_weighting"] == "effective" else ""
    return "weighted, %s%s" % (config["class_weighting"], beta)


def table(runs):
    """Markdown lines: one row per run, then the mean of every configuration run with
    several seeds. Columns: each class's final AP (training count in the header), mAP."""
    classes = runs[0][1]["classes"]
    counts = runs[0][1]["train_counts"]
    header = ["run", "RCNN cls loss"] + ["%s (%d)" % (c, n) for c, n in zip(classes, counts)] \
        + ["mAP", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups = {}
    for run, res in runs:
        loss = loss_label(res["config"])
        ap = res["final_ap"]
        groups.setdefault(loss, []).append(ap)
        lines.append("| " + " | ".join(
            ["%s (seed %d)" % (os.path.basename(run.rstrip("/")), res["config"]["seed"]), loss]
            + ["%.3f" % ap[c] for c in classes]
            + ["**%.3f**" % ap["mAP"], "%.0f s" % res["wall_time_s"]]) + " |")
    for loss, aps in groups.items():
        if len(aps) > 1:
            lines.append("| " + " | ".join(
                ["mean of %d seeds" % len(aps), loss]
                + ["%.3f" % np.mean([ap[c] for ap in aps]) for c in classes]
                + ["**%.3f**" % np.mean([ap["mAP"] for ap in aps]), ""]) + " |")
    return lines


def plot(runs, path):
    """Test mAP and the AP of the last (rarest) class against epoch, one colour per
    configuration and one line style per seed."""
    plt = common.pyplot()
    classes = runs[0][1]["classes"]
    labels = [loss_label(res["config"]) for _, res in runs]
    configs = list(dict.fromkeys(labels))
    seeds = sorted({res["config"]["seed"] for _, res in runs})
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for (_, res), loss in zip(runs, labels):
        pts = [(h["epoch"], h["ap"]) for h in res["history"] if "ap" in h]
        kw = dict(marker="o", markersize=3, color="C%d" % configs.index(loss),
                  linestyle=styles[seeds.index(res["config"]["seed"]) % len(styles)],
                  label="%s, seed %d" % (loss, res["config"]["seed"]))
        axes[0].plot([e for e, _ in pts], [ap["mAP"] for _, ap in pts], **kw)
        axes[1].plot([e for e, _ in pts], [ap[classes[-1]] for _, ap in pts], **kw)
    axes[0].set_title("test mAP (VOC07)")
    axes[1].set_title("test AP of the rarest class (%s)" % classes[-1])
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


if __name__ == "__main__":
    from examples.faster_rcnn.cli import summarize_main
    summarize_main()
