"""Figures of a training run: the tutorial's per-epoch curves and predicted against true age."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from brainage.utils import atomic_write


def plot_training_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """The tutorial's 3×2 figure (loss, MAE, RMSE, learning rate, max gradient norm) per epoch;
    one line per fold (``fold-member`` when ``history``'s ``member`` column holds several)."""
    figure = Figure(figsize=(12, 12), layout="constrained")
    axes = figure.subplots(3, 2).ravel()
    panels = (("loss", "Loss (z units)"), ("mae", "MAE (years)"), ("rmse", "RMSE (years)"), ("lr", "Learning rate"), ("max_grad_norm", "Max gradient norm"))
    members = "member" in history and history["member"].nunique() > 1
    folds: list[tuple[str, pd.DataFrame]] = [("", history)]
    if "fold" in history:
        by = ["fold", "member"] if members else ["fold"]
        folds = [(f"fold {'-'.join(map(str, group))} ", table) for group, table in history.groupby(by)]
    for ax, (key, title) in zip(axes, panels, strict=False):
        for label, table in folds:
            if key in ("loss", "mae", "rmse"):
                line = ax.plot(table["epoch"], table[f"train_{key}"], label=f"{label}train")[0]
                ax.plot(table["epoch"], table[f"val_{key}"], "--", color=line.get_color(), label=f"{label}validation")
            else:
                ax.plot(table["epoch"], table[key], label=label.strip() or None)
        ax.set_title(title)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key in ("loss", "mae") and len(folds) <= 5:
            ax.legend(fontsize="small")
    axes[3].set_yscale("log")
    axes[5].set_axis_off()
    return save_figure(figure, path)


def plot_predictions(predictions: pd.DataFrame, path: str | Path) -> Path:
    """Predicted against true age (identity line), uncorrected and, where there is one, bias-corrected, by group."""
    variants = [column for column in ("brain_age", "brain_age_corrected") if column in predictions and predictions[column].notna().any()]
    figure = Figure(figsize=(6 * len(variants), 5.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(variants)))
    groups = predictions["group"].fillna("unknown") if "group" in predictions else pd.Series("all", index=predictions.index)
    low = float(np.nanmin(predictions[["age", *variants]].to_numpy())) - 2
    high = float(np.nanmax(predictions[["age", *variants]].to_numpy())) + 2
    for ax, column in zip(axes, variants, strict=False):
        for group, rows in predictions.groupby(groups, sort=True):
            ax.scatter(rows["age"], rows[column], s=14, alpha=0.7, label=str(group))
        ax.plot([low, high], [low, high], color="black", lw=1)
        mae = float(np.nanmean(np.abs(predictions[column] - predictions["age"])))
        ax.set_title(f"{'bias-corrected' if column.endswith('corrected') else 'uncorrected'}: MAE {mae:.2f} y (per scan)")
        ax.set(xlim=(low, high), ylim=(low, high), xlabel="Age (years)", ylabel="Brain age (years)", aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(figure, path)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return path
