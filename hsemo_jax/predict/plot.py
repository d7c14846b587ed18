"""The PNG of `hsemo-jax predict --plot`: one panel per face track (videos, frame sequences) or per
face (still images), source and model in the title.

    plot(table, "out.png")            # writes the PNG atomically; returns its path
    figure(table) -> Figure           # the chart itself (what the tests look at)
    layout(table) -> Layout           # which panels are drawn and which are left out

Videos and frame sequences: a timeline per track, expression probabilities above and valence/arousal
below, the x axis spanning the whole sequence (frames without a face included). At most
`max_panels` tracks are drawn, longest first; the title says how many are left out and which, and
`plot` says so on stderr. Tracks with few detections, and detections with no neighbour in their
track, are drawn with markers; lines break where a track skips frames. Still images (every
sequence a single frame): a bar chart per face, titled with the image's file name. The
valence/arousal axis spans at least [-1, 1] and widens to take every value in the table.
"""
from __future__ import annotations

import math
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hsemo_jax.fileio import atomic_path
from hsemo_jax.predict.pipeline import Predictions

MAX_PANELS = 12
SHORT_TRACK = 5  # tracks with fewer detections are drawn with markers
VA_COLORS = {"valence": ("black", "-"), "arousal": ("dimgray", "--")}


@dataclass
class Panel:
    title: str
    rows: np.ndarray  # the face rows of the track (timeline, in frame order) or the one face (still)
    xlim: tuple[float, float] | None = None  # timeline: the whole sequence
    use_time: bool = False  # timeline: x is time in seconds, else frame number


@dataclass
class Layout:
    still: bool  # bar charts per face, else timelines per track
    panels: list[Panel]
    hidden: list[str] = field(default_factory=list)  # the tracks or faces left out, described
    no_face: list[str] = field(default_factory=list)  # still images without a face

    @property
    def noun(self) -> str:
        return "face" if self.still else "track"

    def hidden_note(self, limit: int = 8) -> str:
        """'+N more tracks not shown: ...' (empty when none is hidden)."""
        if not self.hidden:
            return ""
        names = ", ".join(self.hidden[:limit]) + (", ..." if len(self.hidden) > limit else "")
        n = len(self.hidden)
        return f"+{n} more {self.noun}{'s' if n > 1 else ''} not shown: {names}"


def _sequences(table: Predictions) -> np.ndarray:
    return table.sequences if table.sequences is not None else table["source"]


def _name(path: str) -> str:
    return Path(str(path).rstrip("/\\")).name or str(path)


def _frames_of(table: Predictions) -> dict[str, set]:
    """Sequence -> its frame numbers, sequences in table order."""
    out: dict[str, set] = {}
    for s, f in zip(_sequences(table), table["frame"]):
        out.setdefault(s, set()).add(int(f))
    return out


def layout(table: Predictions, max_panels: int = MAX_PANELS) -> Layout:
    """The panels of `figure(table)`: stills when every sequence is a single frame, else timelines,
    longest tracks first; the rest are `hidden`."""
    seq, frame, face = _sequences(table), table["frame"], table.has_face
    frames_of = _frames_of(table)
    if all(len(fs) == 1 for fs in frames_of.values()):
        return _still_layout(table, max_panels)
    keys: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(face):
        keys.setdefault((seq[i], int(table["track_id"][i])), []).append(i)
    order = sorted(keys, key=lambda k: -len(keys[k]))  # stable: first seen first among equals
    several = len(frames_of) > 1
    panels, hidden = [], []
    for key in order:
        s, tid = key
        rows = np.array(keys[key])
        rows = rows[np.argsort(frame[rows], kind="stable")]
        label = f"track {tid}" + (f" ({_name(s)})" if several else "")
        n = len(rows)
        if len(panels) == max_panels:
            hidden.append(f"{label}: {n} detection{'s' if n > 1 else ''}")
            continue
        in_seq = seq == s
        times = table["time"][in_seq]
        use_time = bool(np.isfinite(times).all())
        x = times if use_time else frame[in_seq].astype(float)
        panels.append(Panel(f"{label}, {n} detection{'s' if n > 1 else ''}", rows,
                            (min(0.0, float(x.min())), float(x.max())), use_time))
    return Layout(False, panels, hidden)


def _still_layout(table: Predictions, max_panels: int) -> Layout:
    src, face = table["source"], table.has_face
    per_image: dict[str, list[int]] = {}
    for i in np.flatnonzero(face):
        per_image.setdefault(src[i], []).append(i)
    no_face = [_name(s) for s in dict.fromkeys(src) if s not in per_image]
    panels, hidden = [], []
    for s, rows in per_image.items():
        for i in rows:
            tid = int(table["track_id"][i])
            title = _name(s) + (f", track {tid}" if len(rows) > 1 else "")
            if len(panels) == max_panels:
                hidden.append(title)
            else:
                panels.append(Panel(title, np.array([i])))
    return Layout(True, panels, hidden, no_face)


def title(table: Predictions, models=None) -> str:
    """'<source(s)> · model <name(s)>' for the figure's title."""
    frames_of = _frames_of(table)
    seqs = list(frames_of)
    if len(seqs) == 1:
        what = _name(seqs[0])
    else:
        parents = {str(Path(s).parent) for s in seqs}
        kind = "images" if all(len(fs) == 1 for fs in frames_of.values()) else "sequences"
        what = (f"{_name(parents.pop())}/ ({len(seqs)} {kind})" if len(parents) == 1
                else ", ".join(_name(s) for s in seqs[:3]) + (f" +{len(seqs) - 3} more" if len(seqs) > 3 else ""))
    models = tuple(table.models if models is None else ([models] if isinstance(models, str) else models))
    if models:
        what += f"  ·  model{'s' if len(models) > 1 else ''} " + " + ".join(_name(m) for m in models)
    return what


def va_limits(table: Predictions) -> tuple[float, float]:
    """[-1, 1], widened to every finite valence/arousal value, with a 5% margin."""
    vals = np.concatenate([table[c][table.has_face] for c in VA_COLORS if c in table.columns] or [np.zeros(0)])
    vals = vals[np.isfinite(vals)]
    lo, hi = min(-1.0, float(vals.min(initial=0.0))), max(1.0, float(vals.max(initial=0.0)))
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _colors(names) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _segments(frames: np.ndarray) -> np.ndarray:
    """Indices at which to break a track's line: where it skips frames."""
    return np.flatnonzero(np.diff(frames) > 1) + 1


def _with_breaks(x: np.ndarray, y: np.ndarray, breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.insert(x.astype(float), breaks, np.nan), np.insert(y.astype(float), breaks, np.nan)


def figure(table: Predictions, *, models=None, max_panels: int = MAX_PANELS, plan: Layout | None = None):
    """The chart as a matplotlib `Figure` (no pyplot state). `models`: names for the title (default
    `table.models`)."""
    from matplotlib.figure import Figure

    plan = plan or layout(table, max_panels)
    has_va = all(c in table.columns for c in VA_COLORS)
    n = len(plan.panels)
    ncols = max(1, min(n, 3 if n <= 9 else 4))
    nrows = max(1, math.ceil(n / ncols))
    per = 1 + has_va
    width = 4.4 * ncols + (1.8 if n else 0)
    fig = Figure(figsize=(max(width, 6.5), nrows * (2.4 + 1.6 * has_va) + 1.2), layout="constrained")
    fig.suptitle(title(table, models), fontsize=11)
    notes = [s for s in (plan.hidden_note(),
                         f"no face found in: {', '.join(plan.no_face[:6])}"
                         + (f" +{len(plan.no_face) - 6} more" if len(plan.no_face) > 6 else "") if plan.no_face else "")
             if s]
    if notes:
        fig.supxlabel("\n".join(textwrap.fill(s, int(width * 13)) for s in notes), fontsize=9, color="firebrick")
    if not n:
        ax = fig.add_subplot()
        ax.set_axis_off()
        frames = len(set(zip(_sequences(table), table["frame"])))
        ax.text(0.5, 0.5, f"no faces detected in {frames} frame(s)", ha="center", va="center", fontsize=12)
        return fig
    grid = fig.add_gridspec(nrows * per, ncols, height_ratios=[3, 2] * nrows if has_va else None)
    colors = _colors(table.expression_names)
    va_lim = va_limits(table) if has_va else None
    draw = _draw_still if plan.still else _draw_timeline
    for k, panel in enumerate(plan.panels):
        r, c = divmod(k, ncols)
        top = fig.add_subplot(grid[r * per, c])
        bottom = fig.add_subplot(grid[r * per + 1, c], sharex=None if plan.still else top) if has_va else None
        draw(table, panel, top, bottom, colors, va_lim)
    handles = [h for ax in fig.axes[:per] for h in ax.get_legend_handles_labels()[0]]
    if not plan.still:  # bar charts name their bars on the axis
        fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return fig


def _draw_timeline(table, panel: Panel, top, bottom, colors, va_lim) -> None:
    rows = panel.rows
    frames = table["frame"][rows]
    x = table["time"][rows] if panel.use_time else frames
    breaks = _segments(frames)
    seg_len = np.diff(np.concatenate([[0], breaks, [len(rows)]]))
    style = {"lw": 1.2}
    if len(rows) < SHORT_TRACK or (seg_len == 1).any():
        style.update(marker="o", markersize=3.5)
    for name in table.expression_names:
        top.plot(*_with_breaks(x, table[f"p_{name}"][rows], breaks), color=colors[name], label=name, **style)
    top.set_ylim(0, 1.02)
    top.set_ylabel("probability")
    top.set_title(panel.title, fontsize=10)
    lo, hi = panel.xlim
    pad = 0.01 * (hi - lo) if hi > lo else 0.5
    top.set_xlim(lo - pad, hi + pad)
    last = bottom or top
    if bottom is not None:
        for name, (color, ls) in VA_COLORS.items():
            bottom.plot(*_with_breaks(x, table[name][rows], breaks), color=color, ls=ls, label=name, **style)
        bottom.axhline(0, color="gray", lw=0.5)
        bottom.set_ylim(*va_lim)
        bottom.set_ylabel("valence / arousal")
        top.tick_params(labelbottom=False)
    last.set_xlabel("time (s)" if panel.use_time else "frame")


def _draw_still(table, panel: Panel, top, bottom, colors, va_lim) -> None:
    i = panel.rows[0]
    names = list(table.expression_names)
    probs = [table[f"p_{c}"][i] for c in names]
    bars = top.bar(names, probs, color=[colors[c] for c in names])
    best = int(np.nanargmax(probs))
    bars[best].set_edgecolor("black")
    top.bar_label(bars, labels=[f"{v:.2f}" if j == best else "" for j, v in enumerate(probs)], fontsize=8)
    top.set_ylim(0, 1.1)
    top.set_ylabel("probability")
    top.set_title(panel.title, fontsize=10)
    top.tick_params(axis="x", labelrotation=45, labelsize=8)
    if bottom is not None:
        va = [table[c][i] for c in VA_COLORS]
        vbars = bottom.bar(list(VA_COLORS), va, color=[c for c, _ in VA_COLORS.values()], width=0.5)
        bottom.bar_label(vbars, fmt="%+.2f", fontsize=8)
        bottom.axhline(0, color="gray", lw=0.5)
        bottom.set_ylim(va_lim[0] - 0.15, va_lim[1] + 0.15)  # room for the value labels
        bottom.set_ylabel("valence / arousal")


def plot(table: Predictions, out: str | os.PathLike, *, models=None, max_panels: int = MAX_PANELS) -> Path:
    """Write `figure(table)` to `out` (PNG, atomically); a line on stderr names what it leaves out."""
    out = Path(out)
    plan = layout(table, max_panels)
    if plan.hidden:
        shown = len(plan.panels)
        print(f"note: the plot shows {shown} of {shown + len(plan.hidden)} {plan.noun}s "
              f"({'longest first' if not plan.still else 'in file order'}); {plan.hidden_note()}", file=sys.stderr)
    fig = figure(table, models=models, plan=plan)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return out
