"""Strict readers for annotation text files: every error names file:line and the offending text."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hsemo_jax.errors import InputError


@dataclass(frozen=True)
class Line:
    """One annotation line: ``path:lineno`` (1-based) and its text without the newline."""

    path: Path
    lineno: int
    text: str

    def error(self, what: str) -> InputError:
        """An InputError naming this file:line, the problem and the offending text."""
        return InputError(f"{self.path}:{self.lineno}: {what}: {self.text!r}")

    def fields(self, count: int | None = None) -> list[str]:
        """Split on commas (CSV quoting honoured) and strip; check the count when given."""
        parts = [p.strip() for p in next(csv.reader([self.text]), [])]
        if count is not None and len(parts) != count:
            raise self.error(f"expected {count} comma-separated fields, got {len(parts)}")
        return parts

    def int(self, text: str, what: str, allowed: range | tuple | None = None) -> int:
        """Parse an integer field (``"3"``; also ``"3.0"``), optionally restricted to `allowed`."""
        try:
            value = float(text)
        except ValueError:
            raise self.error(f"{what} must be an integer, got {text!r}") from None
        if not value.is_integer():
            raise self.error(f"{what} must be an integer, got {text!r}")
        value = int(value)
        if allowed is not None and value not in allowed:
            raise self.error(f"{what} must be one of {_describe(allowed)}, got {value}")
        return value

    def float(self, text: str, what: str) -> float:
        """Parse a finite float field."""
        try:
            value = float(text)
        except ValueError:
            raise self.error(f"{what} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise self.error(f"{what} must be finite, got {text!r}")
        return value


def _describe(allowed) -> str:
    if isinstance(allowed, range):
        return f"{allowed.start}..{allowed.stop - 1}"
    return ", ".join(str(a) for a in allowed)


def read_lines(path: str | Path) -> Iterator[Line]:
    """Yield the non-blank lines of a UTF-8 text file (BOM tolerated) as `Line`s."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for lineno, text in enumerate(f, 1):
                text = text.rstrip("\r\n")
                if text.strip():
                    yield Line(path, lineno, text)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e})") from None
