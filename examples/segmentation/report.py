"""Summary over seeds (mean, std, min, max), the Markdown table and the two figures."""
import os

import numpy as np

from examples import common

COLORS = {"none": "tab:gray", "inverse": "tab:purple", "median": "tab:blue",
          "effective": "tab:orange"}


def run_name(method, seed):
    """The folder (under ``OUT/runs``) and key of one run of the sweep."""
    return "%s-seed%d" % (method, seed)


def display_indices(labels, rare_class, count=4):
    """The first ``count`` test images holding the rare class, then the first others."""
    has_rare = [i for i in range(len(labels)) if np.any(labels[i] == rare_class)]
    others = [i for i in range(len(labels)) if i not in has_rare]
    return (has_rare[:count - 1] + others[:1]) if count > 1 else has_rare[:1]


def _spread(values):
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)),
            "min": float(np.nanmin(values)), "max": float(np.nanmax(values)),
            "values": [float(v) for v in values]}


def summarize(runs, methods, seeds, class_names):
    """Final-epoch test mIoU, pixel accuracy and per-class IoU of each weighting over seeds."""
    summary = {"methods": list(methods), "seeds": list(seeds), "classes": list(class_names),
               "by_method": {}}
    for method in methods:
        finals = [runs[run_name(method, seed)]["final"] for seed in seeds]
        summary["by_method"][method] = {
            "miou": _spread([f["miou"] for f in finals]),
            "pixel_accuracy": _spread([f["pixel_accuracy"] for f in finals]),
            "iou": {name: _spread([f["iou"][c] for f in finals])
                    for c, name in enumerate(class_names)},
            "class_weight": runs[run_name(method, seeds[0])]["class_weight"],
        }
    return summary


def format_table(summary, class_names):
    """Markdown table: one row per weighting, mean ± std (min-max) over seeds."""
    def cell(stat):
        return "%.3f ± %.3f (%.3f-%.3f)" % (stat["mean"], stat["std"], stat["min"], stat["max"])
    header = ["weighting", "mIoU"] + ["IoU %s" % name for name in class_names] + ["pixel acc."]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, stats in summary["by_method"].items():
        row = [method, cell(stats["miou"])] + [cell(stats["iou"][n]) for n in class_names] \
            + [cell(stats["pixel_accuracy"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_table(path, summary, class_names):
    with open(path, "w") as handle:
        handle.write("Test split, final epoch; mean ± std (min-max) over seeds %s.\n\n"
                     % ", ".join(str(s) for s in summary["seeds"]))
        handle.write(format_table(summary, class_names) + "\n")


def plot_curves(path, runs, methods, seeds, rare_class=-1):
    """Training loss, test mIoU and rare-class IoU per epoch: mean line, min-max band."""
    plt = common.pyplot()
    panels = (("train_loss", "training loss, main + aux\n(each weighting its own loss)"),
              ("miou", "test mIoU"),
              ("rare", "test IoU of the rare class"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=100)
    for method in methods:
        histories = [runs[run_name(method, seed)]["history"] for seed in seeds]
        epochs = [h["epoch"] for h in histories[0]]
        for ax, (key, title) in zip(axes, panels):
            values = np.array([[h["iou"][rare_class] if key == "rare" else h[key]
                                for h in history] for history in histories])
            ax.plot(epochs, values.mean(0), "-o", ms=3, color=COLORS[method], label=method)
            ax.fill_between(epochs, values.min(0), values.max(0), color=COLORS[method],
                            alpha=0.2, linewidth=0)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0].legend(title="class weighting", fontsize=8)
    fig.suptitle("mean over %d seeds, band = min-max" % len(seeds), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def colorize(mask):
    """RGB image of a label mask in the VOC colours; void (-1 or 255) in VOC's cream."""
    from gluoncv.utils.viz import get_color_pallete
    # get_color_pallete writes 255 over the -1s of the array it is given: pass a copy
    labels = np.array(mask, dtype=np.int32, ndmin=2)
    return np.asarray(get_color_pallete(labels, "pascal_voc").convert("RGB"))


def plot_masks(path, out, test_data, methods, seed, indices, class_names):
    """Rows: test images; columns: image, ground truth, each weighting's prediction."""
    plt = common.pyplot()
    images, labels = test_data
    predictions = {}
    for method in methods:
        saved = np.load(os.path.join(out, "runs", run_name(method, seed),
                                     "predictions.npz"))
        predictions[method] = dict(zip(saved["indices"].tolist(), saved["predicted"]))
    columns = ["image", "ground truth"] + ["%s (seed %d)" % (m, seed) for m in methods]
    fig, axes = plt.subplots(len(indices), len(columns), squeeze=False,
                             figsize=(1.9 * len(columns), 1.9 * len(indices) + 0.5), dpi=100)
    for row, index in enumerate(indices):
        panels = [images[index], colorize(labels[index])] + \
            [colorize(predictions[m][index]) for m in methods]
        for col, panel in enumerate(panels):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(columns[col], fontsize=8)
    palette = colorize(np.arange(len(class_names)))[0]
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[c] / 255.0, label=name)
               for c, name in enumerate(class_names)]
    handles.append(plt.Rectangle((0, 0), 1, 1, color=colorize([-1])[0, 0] / 255.0, label="void"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)
