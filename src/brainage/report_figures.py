"""The figures of the HTML report (matplotlib ``Figure``s, each usable on its own) and the tables
shown beside them (coverage, test–retest, visits); :mod:`brainage.report` embeds them in the page."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainage.conformal import covered
from brainage.evaluation import aggregate_sessions
from brainage.preprocess import PreparedCache

#: The issue's targets: coverage within this many points of nominal; SD across poses at most this (years).
COVERAGE_TOLERANCE = 0.05
POSE_TARGET_SD = 0.5


def bland_altman(predictions: pd.DataFrame) -> Figure:
    """Difference (brain age − age) against the mean of the two, with the mean difference and its
    95 % limits of agreement (± 1.96 SD), uncorrected and bias-corrected."""
    columns = [column for column in ("brain_age", "brain_age_corrected") if column in predictions]
    figure = Figure(figsize=(6 * len(columns) + 1.5, 4.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(columns)))
    groups = predictions["group"].fillna("unknown") if "group" in predictions else pd.Series("all", index=predictions.index)
    for ax, column in zip(axes, columns, strict=False):
        mean = (predictions[column] + predictions["age"]) / 2
        difference = predictions[column] - predictions["age"]
        for group, rows in predictions.groupby(groups, sort=True):
            ax.scatter(mean[rows.index], difference[rows.index], s=14, alpha=0.7, label=str(group))
        bias, spread = float(difference.mean()), 1.96 * float(difference.std())
        ax.axhline(bias, color="black", lw=1)
        for limit in (bias - spread, bias + spread):
            ax.axhline(limit, color="black", lw=1, ls="--")
        ax.set_title(
            f"{'bias-corrected' if column.endswith('corrected') else 'uncorrected'}: mean {bias:+.2f} y, limits {bias - spread:+.1f} to {bias + spread:+.1f} y"
        )
        ax.set(xlabel="Mean of age and brain age (years)", ylabel="Brain age − age (years)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plots, not over the points
    return figure


def gap_figure(predictions: pd.DataFrame, column: str = "brain_age_corrected") -> Figure:
    """Box plots of the per-subject mean brain-age gap by group."""
    frame = predictions.dropna(subset=["group"]).assign(gap=lambda f: f[column] - f["age"])
    per_subject = frame.groupby(["group", "subject_id"])["gap"].mean().reset_index()
    groups = sorted(per_subject["group"].unique())
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    ax.boxplot([per_subject.loc[per_subject["group"] == g, "gap"] for g in groups], tick_labels=groups)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="Brain-age gap (years, per subject)", title="Bias-corrected brain-age gap by group")
    ax.grid(alpha=0.3, axis="y")
    return figure


def spaghetti_figure(predictions: pd.DataFrame, column: str = "brain_age") -> Figure:
    """Each person's visits (repeat scans averaged), one line per person coloured by group: brain
    age against age (left, with the identity brain age = age) and the change of both since the
    first visit (right, with the identity slope: brain age moving exactly with age). Where
    ``mr_delay`` (days since the first visit) is known, ages are the first visit's plus the delay,
    as in :func:`brainage.reliability.longitudinal` (OASIS-2's ages are whole years)."""
    kept = [c for c in ("scan_id", "subject_id", "session_id", "age", column, "group", "mr_delay") if c in predictions]
    sessions = aggregate_sessions(predictions[kept].rename(columns={column: "brain_age"}))
    sessions = sessions.dropna(subset=["age", "brain_age"]).sort_values(["subject_id", "age"])
    if "mr_delay" in sessions:
        delay = sessions["mr_delay"].astype(float)
        known = delay.notna().groupby(sessions["subject_id"]).transform("all")
        first = sessions.assign(delay=delay).sort_values("delay").groupby("subject_id")[["age", "delay"]].transform("first")
        sessions["age"] = np.where(known, first["age"] + (delay - first["delay"]) / 365.25, sessions["age"])
        sessions = sessions.sort_values(["subject_id", "age"])
    groups = sessions["group"].fillna("unknown").astype(str) if "group" in sessions else pd.Series("all", index=sessions.index)
    colours = {name: f"C{k}" for k, name in enumerate(sorted(groups.unique()))}
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    absolute, change = figure.subplots(1, 2)
    for _subject, rows in sessions.groupby("subject_id", sort=True):
        colour = colours[groups[rows.index[0]]]
        style = {"color": colour, "marker": "o", "ms": 3, "lw": 1, "alpha": 0.7}
        absolute.plot(rows["age"], rows["brain_age"], **style)
        if len(rows) >= 2:
            change.plot(rows["age"] - rows["age"].iloc[0], rows["brain_age"] - rows["brain_age"].iloc[0], **style)
    low, high = float(sessions[["age", "brain_age"]].min().min()) - 1, float(sessions[["age", "brain_age"]].max().max()) + 1
    absolute.plot([low, high], [low, high], color="black", lw=1, ls="--", label="brain age = age")
    span = float((sessions.groupby("subject_id")["age"].agg(np.ptp)).max()) if len(sessions) else 1.0
    change.plot([0, span], [0, span], color="black", lw=1.5, ls="--", label="identity slope (Δ brain age = Δ age)")
    for name, colour in colours.items():
        absolute.plot([], [], color=colour, marker="o", ms=3, lw=1, label=name)
    absolute.set(xlabel="Age (years)", ylabel=f"{column.replace('_', ' ').capitalize()} (years)", title="Each person's visits")
    change.set(xlabel="Years since the first visit", ylabel="Change of brain age since the first visit (years)", title="Change since the first visit")
    for ax in (absolute, change):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def interval_figure(predictions: pd.DataFrame, nominal: float | None = None, heldout: pd.DataFrame | None = None) -> Figure:
    """Per-scan intervals against the ages they should hold: left, every scan's interval (grey,
    scans in order of brain age) with its age as a dot (black inside, red outside); right, the
    measured coverage per group (and of ``heldout`` people) beside the nominal one and its ±5
    point band."""
    frame = predictions.dropna(subset=["brain_age", "brain_age_lower", "brain_age_upper", "age"]).sort_values("brain_age")
    inside = covered(frame["brain_age_lower"], frame["brain_age_upper"], frame["age"])
    figure = Figure(figsize=(12, 4.6), layout="constrained")
    scans, bars = figure.subplots(1, 2, width_ratios=(2, 1))
    rank = np.arange(len(frame))
    scans.fill_between(rank, frame["brain_age_lower"], frame["brain_age_upper"], color="0.8", step="mid", label="interval")
    scans.plot(rank, frame["brain_age"], color="0.4", lw=1, label="brain age")
    scans.scatter(rank[inside], frame["age"][inside], s=8, color="black", label=f"age inside ({int(inside.sum())})")
    scans.scatter(rank[~inside], frame["age"][~inside], s=14, color="tab:red", label=f"age outside ({int((~inside).sum())})")
    scans.set(xlabel="Scans, in order of predicted brain age", ylabel="Years", title=f"Out-of-fold intervals: {inside.mean():.1%} of {len(frame)} ages inside")
    scans.grid(alpha=0.3)
    scans.legend(fontsize="small", loc="upper left")
    table = coverage_table(predictions, heldout)
    positions = np.arange(len(table))
    bars.barh(positions, 100 * table["coverage"], color=["tab:orange" if name.startswith("held-out") else "tab:blue" for name in table["set"]])
    for y, (share, count) in enumerate(zip(table["coverage"], table["scans"], strict=False)):
        bars.text(102, y, f"{share:.1%} of {count}", va="center", fontsize=8)  # right of every bar and of the band
    title = "Measured coverage"
    if nominal is not None:
        bars.axvspan(100 * (nominal - COVERAGE_TOLERANCE), 100 * (nominal + COVERAGE_TOLERANCE), color="tab:green", alpha=0.2)
        bars.axvline(100 * nominal, color="tab:green", lw=1.5)
        title += f"\n(green: nominal {nominal:.0%} ± {COVERAGE_TOLERANCE * 100:.0f} points)"
    bars.set_yticks(positions, table["set"], fontsize=8)
    bars.invert_yaxis()
    bars.set(xlim=(0, 150), xticks=range(0, 101, 20), xlabel="Ages inside their interval (%)", title=title)
    bars.grid(alpha=0.3, axis="x")
    return figure


def coverage_table(predictions: pd.DataFrame, heldout: pd.DataFrame | None = None) -> pd.DataFrame:
    """The share of ages inside their scan's interval: all out-of-fold scans, each group's, and
    ``heldout`` people's; with the number of scans and the median interval width (years)."""
    rows = []

    def add(name: str, frame: pd.DataFrame) -> None:
        known = frame.dropna(subset=["age", "brain_age_lower", "brain_age_upper"])
        if len(known):
            inside = covered(known["brain_age_lower"], known["brain_age_upper"], known["age"])
            width = known["brain_age_upper"] - known["brain_age_lower"]
            rows.append(
                {"set": name, "scans": len(known), "inside": int(inside.sum()), "coverage": float(inside.mean()), "median_width": float(width.median())}
            )

    add("out of fold, all scans", predictions)
    if "group" in predictions and predictions["group"].notna().any():
        for group, rows_of in predictions.groupby(predictions["group"].astype(str), sort=True):
            add(f"out of fold, {group}", rows_of)
    if heldout is not None and "brain_age_lower" in heldout:
        add("held-out people", heldout)
    return pd.DataFrame(rows, columns=["set", "scans", "inside", "coverage", "median_width"])


def pose_figure(poses: pd.DataFrame) -> Figure:
    """Brain age of each re-posed scan minus its brain age at the identity pose, per pose, one
    panel per way of re-posing (``header``, ``voxels``), with the ±0.5 y target band."""
    modes = list(dict.fromkeys(poses["mode"]))
    figure = Figure(figsize=(6 * len(modes), 4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(modes), sharey=True))
    for ax, mode in zip(axes, modes, strict=False):
        for k, (scan, rows) in enumerate(poses[poses["mode"] == mode].groupby("scan", sort=False)):
            identity = rows.loc[rows["pose"] == 0, "brain_age"]
            base = float(identity.iloc[0]) if len(identity) else float(rows["brain_age"].mean())
            ax.plot(
                rows["pose"],
                rows["brain_age"] - base,
                marker="o",
                ms=4,
                lw=1,
                color=f"C{k}",
                label=f"{short_scan(str(scan))}: SD {rows['brain_age'].std(ddof=1):.2f} y",
            )
        ax.axhspan(-POSE_TARGET_SD, POSE_TARGET_SD, color="tab:green", alpha=0.12, label=f"±{POSE_TARGET_SD:g} y (the target is on the SD)")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(xlabel="Pose (0: identity)", ylabel="Brain age − brain age at the identity (years)", title=f"re-posed as {mode}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def qc_montage(cache: PreparedCache, rows: list[int]) -> Figure:
    """Sagittal, coronal and axial slices through the centre of intensity of the cache's scans
    ``rows``, one row each (the grid's middle may miss the head where a pipeline does not register)."""
    from scipy import ndimage

    figure = Figure(figsize=(7.5, 2.4 * len(rows)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(rows), 3))
    for row_axes, i in zip(axes, rows, strict=False):
        volume = np.asarray(cache.volume(i), dtype=np.float32)
        low = float(volume.min())
        foreground = volume[volume > low]
        high = float(np.percentile(foreground, 99)) if foreground.size else low + 1
        centre = ndimage.center_of_mass(volume - low) if foreground.size else [n / 2 for n in volume.shape]
        x, y, z = (min(int(c), n - 1) for c, n in zip(centre, volume.shape, strict=False))
        record = cache.manifest.iloc[i]
        flagged = " (flagged)" if bool(record.get("qc_flagged", False)) else ""
        row_axes[0].set_ylabel(f"{record['scan_id']}\nQC r={float(record['qc_score']):.2f}{flagged}", fontsize=8)
        for ax, image, label in zip(row_axes, (volume[x], volume[:, y], volume[:, :, z]), ("sagittal", "coronal", "axial"), strict=False):
            ax.imshow(image.T, origin="lower", cmap="gray", vmin=low, vmax=high)
            ax.set_title(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return figure


def saliency_figure(saliency: np.ndarray, background: np.ndarray, mask: np.ndarray, title: str) -> Figure:
    """The saliency map over ``background``: three orthogonal slices through its peak inside
    ``mask``, the top quarter of the saliency inside ``mask`` shown."""
    from scipy import ndimage

    smooth = np.where(mask, ndimage.gaussian_filter(saliency.astype(np.float64), 1.0), 0.0)
    peak = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    shown = np.ma.masked_where(~mask | (smooth < np.percentile(smooth[mask], 75)), smooth)
    low, high = np.percentile(background, (1, 99))
    figure = Figure(figsize=(11, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    for ax, axis, label in zip(axes, range(3), ("sagittal", "coronal", "axial"), strict=False):
        take: list[slice | int] = [slice(None)] * 3
        take[axis] = int(peak[axis])
        ax.imshow(background[tuple(take)].T, origin="lower", cmap="gray", vmin=low, vmax=high)
        image = ax.imshow(shown[tuple(take)].T, origin="lower", cmap="hot", alpha=0.65, vmin=shown.min(), vmax=shown.max())
        ax.set_title(f"{label} (slice {peak[axis]})", fontsize=9)
        ax.axis("off")
    figure.colorbar(image, ax=axes, shrink=0.8, label="saliency")
    figure.suptitle(title, fontsize=10)
    return figure


def short_scan(path: str) -> str:
    """The last three parts of a scan's path (``OAS2_0001_MR1/RAW/mpr-1.nifti.hdr``)."""
    return "/".join(Path(path).parts[-3:])


def retest_display(table: pd.DataFrame) -> pd.DataFrame:
    """The test–retest table as text: SDs in years to 2 decimals, ICCs to 3, the interval in one column."""
    digits = [3 if measure.startswith("ICC") else 2 for measure in table["measure"]]
    return pd.DataFrame({
        "measure": table["measure"],
        "value": [number(value, d) for value, d in zip(table["value"], digits, strict=False)],
        "95 % interval": ["–" if math.isnan(low) else f"{low:.{d}f} to {high:.{d}f}" for low, high, d in zip(table["ci_low"], table["ci_high"], digits, strict=False)],
        "sessions": table["n_sessions"],
        "scans": table["n_scans"],
    })  # fmt: skip  # keys grouped in rows


def visits_display(table: pd.DataFrame) -> pd.DataFrame:
    """The longitudinal table as text: medians with their quartiles in brackets."""

    def spread(prefix: str) -> list[str]:
        return [
            "–" if math.isnan(m) else f"{m:.2f} [{a:.2f}, {b:.2f}]"
            for m, a, b in zip(table[f"{prefix}_median"], table[f"{prefix}_q1"], table[f"{prefix}_q3"], strict=False)
        ]

    shown = pd.DataFrame({
        "group": table["group"], "subjects": table["n_subjects"], "visits": table["n_visits"],
        "years followed (median)": [number(value, 1) for value in table["years_median"]],
        "slope on age, median [IQR]": spread("slope"),
        "gap SD over visits (median, y)": [number(value, 2) for value in table["gap_sd_median"]],
    })  # fmt: skip  # keys grouped in rows
    if "slope_true_median" in table:
        shown["slope on true brain age, median [IQR]"] = spread("slope_true")
    return shown


def number(value: float, digits: int, kind: str = "f") -> str:
    """``value`` to ``digits`` decimals (``kind="g"``: significant digits); a dash where it is not
    known (never "nan")."""
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}{kind}}"
