"""CSV output (the plot is `hsemo_jax.predict.plot`). Rows are streamed to `<out>.partial` as they
are computed; the final CSV (smoothed, with labels) replaces `<out>` atomically at the end, so
`<out>` is never half-written."""
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
