"""PNG figures of training and evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_curve


def plot_training_curves(history: Sequence[Mapping[str, float]], out: Path, title: str) -> None:
    """Train/val loss and val ROC-AUC per epoch."""
    epochs = [int(r["epoch"]) for r in history]
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], label="train (weighted CE)")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], label="val (video NLL)")
    loss_ax.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    loss_ax.legend()
    auc_ax.plot(epochs, [r["val_auc"] for r in history], color="tab:green")
    auc_ax.set(
        xlabel="epoch", ylabel="ROC-AUC", title=f"{title}: validation ROC-AUC", ylim=(0, 1.02)
    )
    _save(fig, out)


def plot_roc_curves(
    targets: Sequence[int], scores: Mapping[str, Sequence[float]], out: Path, title: str
) -> None:
    """One ROC curve per model (members and ensemble) on the same axes."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, values in scores.items():
        fpr, tpr, _ = roc_curve(targets, values)
        ax.plot(fpr, tpr, label=name, linewidth=2.5 if name == "ensemble" else 1.2)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    _save(fig, out)


def plot_confusion(
    targets: Sequence[int], predictions: Sequence[int], out: Path, title: str
) -> None:
    """Confusion matrix (rows: truth, columns: prediction) with counts."""
    matrix = confusion_matrix(targets, predictions, labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=14)
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["real", "fake"],
        yticklabels=["real", "fake"],
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    _save(fig, out)


def plot_attention_strip(
    crops: np.ndarray,
    attention: Sequence[float],
    timestamps_s: Sequence[float],
    out: Path,
    title: str,
) -> None:
    """Face crops `[N, S, S, 3]` uint8 in a row, each with a bar of its attention weight."""
    count = len(crops)
    fig, axes = plt.subplots(
        2,
        count,
        figsize=(max(4.0, 1.3 * count), 3.2),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    top = max(max(attention, default=0.0), 1e-9)
    colours = plt.get_cmap("magma")(np.asarray(attention) / top)
    for index in range(count):
        image_ax, bar_ax = axes[0, index], axes[1, index]
        image_ax.imshow(crops[index])
        for spine in image_ax.spines.values():
            spine.set(color=colours[index], linewidth=3)
        image_ax.set_xticks([])
        image_ax.set_yticks([])
        image_ax.set_title(f"{timestamps_s[index]:.2f}s", fontsize=8)
        bar_ax.bar([0], [attention[index]], color=colours[index])
        bar_ax.set(ylim=(0, top * 1.05), xticks=[])
        bar_ax.tick_params(labelsize=6)
        if index:
            bar_ax.set_yticks([])
        bar_ax.set_xlabel(f"{attention[index]:.3f}", fontsize=7)
    fig.suptitle(title)
    _save(fig, out)


def _save(fig: Figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
