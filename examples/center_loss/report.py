"""Evaluation and report of the center-loss example: feature metrics, results, plots."""
import os

import numpy as np
import mxnet as mx

from examples import common

MODELS = ("softmax", "center")           # softmax alone; softmax + center loss
LABELS = {"softmax": "softmax only", "center": "softmax + center loss"}
COLORS = {"softmax": "tab:blue", "center": "tab:red"}


def forward_all(net, images, ctx, batch_size=256):
    """Logits and features of ``images`` (NumPy) as NumPy, on the first context."""
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        out, feat = net(mx.nd.array(images[i:i + batch_size], ctx=ctx[0]))
        logits.append(out.asnumpy())
        feats.append(feat.asnumpy())
    return np.concatenate(logits), np.concatenate(feats)


def feature_metrics(features, labels, centers, num_classes):
    """Compactness and nearest-center accuracy of ``features`` around ``centers``.

    compactness = mean distance of a feature to its own class center divided by the mean
    distance between two different centers (scale free; lower is tighter).
    """
    own = np.linalg.norm(features - centers[labels], axis=1)
    between = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    between = between[np.triu_indices(num_classes, k=1)]
    dist = np.linalg.norm(features[:, None] - centers[None], axis=-1)
    return {
        "compactness": float(own.mean() / between.mean()),
        "mean_distance_to_own_center": float(own.mean()),
        "mean_distance_between_centers": float(between.mean()),
        "nearest_center_accuracy": float((dist.argmin(1) == labels).mean()),
    }


def class_means(features, labels, num_classes):
    return np.stack([features[labels == k].mean(0) if np.any(labels == k)
                     else np.zeros(features.shape[1]) for k in range(num_classes)])


def per_class_accuracy(pred, labels, num_classes):
    return [float((pred[labels == k] == k).mean()) if np.any(labels == k) else float("nan")
            for k in range(num_classes)]


def plot_features(path, features, labels, centers, title, class_names):
    plt = common.pyplot()
    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    order = np.random.RandomState(0).permutation(len(labels))    # no class drawn on top
    ax.scatter(features[order, 0], features[order, 1], s=7, alpha=0.65, linewidths=0,
               c=[colors[k % 10] for k in labels[order]], rasterized=True)
    for k, center in enumerate(centers):
        ax.scatter(center[0], center[1], s=140, marker="X", color=colors[k % 10],
                   edgecolors="black", linewidths=1.2, zorder=3)
        ax.annotate(class_names[k], center[:2], xytext=(6, 6), textcoords="offset points",
                    fontsize=9, fontweight="bold", zorder=4,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[k % 10], label=class_names[k])
               for k in range(len(centers))]
    handles.append(plt.Line2D([], [], marker="X", ls="", color="grey", markeredgecolor="black",
                              markersize=9, label="center"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(path, history, lam):
    plt = common.pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6), dpi=110)
    left.plot(epochs, [h["softmax"]["ce"] for h in history], "-o", ms=3, color=COLORS["softmax"],
              label="softmax only: CE")
    left.plot(epochs, [h["center"]["ce"] for h in history], "-o", ms=3, color=COLORS["center"],
              label="softmax + center: CE")
    left.plot(epochs, [h["center"]["center"] for h in history], "--s", ms=3,
              color=COLORS["center"], alpha=0.7,
              label="softmax + center: center term (lambda=%g)" % lam)
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (mean per image)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    for model in MODELS:
        right.plot(epochs, [h[model]["train_accuracy"] for h in history], "--", alpha=0.6,
                   color=COLORS[model], label="%s: train (running)" % LABELS[model])
        right.plot(epochs, [h[model]["test_accuracy"] for h in history], "-o", ms=3,
                   color=COLORS[model], label="%s: test" % LABELS[model])
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.set_ylim(max(0.0, min(min(h[m]["test_accuracy"] for h in history for m in MODELS),
                                min(h[m]["train_accuracy"] for h in history for m in MODELS))
                       - 0.05), 1.005)
    right.legend(fontsize=8, loc="lower right")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate(net, centers, centers_source, x_train, y_train, x_test, y_test, num_classes,
             ctx, minority=()):
    """Test metrics of one trained network, its test features and its centers.

    ``centers`` of None means "use the class means of the training features" (the
    softmax-only model learns none).
    """
    logits, features = forward_all(net, x_test, ctx)
    _, features_train = forward_all(net, x_train, ctx)
    means = class_means(features_train, y_train, num_classes)
    if centers is None:
        centers = means
    pred = logits.argmax(1)
    per_class = per_class_accuracy(pred, y_test, num_classes)
    metrics = {"test_accuracy": float((pred == y_test).mean()),
               "balanced_accuracy": float(np.nanmean(per_class)),
               "per_class_accuracy": per_class, "centers_source": centers_source,
               "centers": centers.tolist()}
    if minority:
        metrics["minority_accuracy"] = float(np.mean([per_class[k] for k in minority]))
    metrics.update(feature_metrics(features, y_test, centers, num_classes))
    metrics["compactness_class_means"] = feature_metrics(features, y_test, means,
                                                         num_classes)["compactness"]
    return metrics, features, centers


def evaluate_models(nets, learned_centers, train, test, ctx, minority, lam, class_names,
                    out_dir):
    """``{model: metrics}`` of both trained networks; draws ``out_dir/features_<model>.png``.

    ``learned_centers`` are the CenterLoss centers of the "center" model; the softmax
    model is measured against the class means of its training features.
    """
    (x_train, y_train), (x_test, y_test) = train, test
    results = {}
    for model in MODELS:
        if model == "center":
            centers, source = learned_centers, "learned CenterLoss centers"
        else:
            centers, source = None, "class means of training features"
        metrics, features, centers = evaluate(
            nets[model], centers, source, x_train, y_train, x_test, y_test,
            len(class_names), ctx, minority)
        results[model] = metrics
        title = "%s (test set)\naccuracy %.3f, compactness %.3f" % (
            LABELS[model], metrics["test_accuracy"], metrics["compactness"])
        if model == "center":
            title = title.replace("loss (", "loss, lambda=%g (" % lam)
        plot_features(os.path.join(out_dir, "features_%s.png" % model), features, y_test,
                      centers, title, class_names)
    return results


def summary_lines(results):
    """The table printed at the end of a run: one line per model."""
    lines = ["%-24s %9s %9s %12s %14s" % ("", "test acc", "balanced", "compactness",
                                          "nearest-center")]
    for model in MODELS:
        m = results[model]
        lines.append("%-24s %9.4f %9.4f %12.4f %14.4f" % (
            LABELS[model], m["test_accuracy"], m["balanced_accuracy"], m["compactness"],
            m["nearest_center_accuracy"]))
    return lines
