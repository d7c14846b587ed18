"""CSV and plot output. Rows are streamed to `<out>.partial` as they are computed; the final CSV
(smoothed, with labels) replaces `<out>` atomically at the end, so `<out>` is never half-written."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from hsemo_jax.fileio import atomic_path
from hsemo_jax.predict.pipeline import Predictions, rows_to_table


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{v:.6g}"
    if isinstance(v, (int, np.integer)):
        return "" if v < 0 else str(int(v))
    return str(v)


def _write_columns(f, columns: dict[str, np.ndarray], header: bool) -> None:
    w = csv.writer(f, lineterminator="\n")
    if header:
        w.writerow(list(columns))
    for i in range(len(next(iter(columns.values())))):
        w.writerow([_fmt(c[i]) for c in columns.values()])


class CsvOutput:
    """Streams raw rows to `<out>.partial`; `finalize(table)` writes `<out>` atomically."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.partial, "w", newline="")
        self._header = True

    def write_rows(self, rows: list[dict], classes: tuple[str, ...], with_va: bool) -> None:
        _write_columns(self._f, rows_to_table(rows, classes, with_va, []).columns, self._header)
        self._header = False
        self._f.flush()

    def finalize(self, table: Predictions) -> Path:
        self._f.close()
        with atomic_path(self.out) as tmp, open(tmp, "w", newline="") as f:
            _write_columns(f, table.columns, True)
        self.partial.unlink(missing_ok=True)
        return self.out

    def abort(self) -> Path:
        """Close the partial file (kept for inspection); `<out>` is left untouched."""
        self._f.close()
        return self.partial


def plot(table: Predictions, out: str | os.PathLike) -> Path:
    """Timeline per face track: expression probabilities (top) and valence/arousal (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    face = table.has_face
    tracks = sorted(set(zip(table["source"][face], table["track_id"][face])))[:6]
    has_va = "valence" in table.columns
    fig, axes = plt.subplots(1 + has_va, max(len(tracks), 1), figsize=(6 * max(len(tracks), 1), 3.2 * (1 + has_va)),
                             squeeze=False)
    use_time = not np.isnan(table["time"][face]).all() if face.any() else False
    for col, (src, tid) in enumerate(tracks):
        sel = face & (table["source"] == src) & (table["track_id"] == tid)
        x = table["time"][sel] if use_time else table["frame"][sel]
        ax = axes[0, col]
        for name in table.expression_names:
            ax.plot(x, table[f"p_{name}"][sel], label=name, lw=1.2)
        ax.set_ylim(0, 1)
        ax.set_title(f"track {tid}" + ("" if len({s for s, _ in tracks}) == 1 else f" ({Path(src).name})"))
        ax.set_ylabel("probability")
        if col == 0:
            ax.legend(fontsize=7, ncol=2, loc="upper right")
        if has_va:
            ax = axes[1, col]
            ax.plot(x, table["valence"][sel], label="valence")
            ax.plot(x, table["arousal"][sel], label="arousal")
            ax.axhline(0, color="gray", lw=0.5)
            ax.set_ylim(-1.2, 1.2)
            ax.legend(fontsize=7, loc="upper right")
        axes[-1, col].set_xlabel("time (s)" if use_time else "frame")
    if not tracks:
        axes[0, 0].text(0.5, 0.5, "no faces detected", ha="center", va="center")
    fig.tight_layout()
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return out
