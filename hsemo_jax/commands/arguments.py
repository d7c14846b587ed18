"""Argument parsing shared by `hsemo-jax evaluate` and `hsemo-jax sweep`. Imports nothing heavy."""
from __future__ import annotations

import argparse

FILTER_NAMES = ("gaussian", "box", "hsemotion", "hsemotion_box")


def float_list(text: str) -> tuple[float, ...]:
    """'0.1,1,10' -> floats; 'a:b:n' with an int n -> n evenly spaced values from a to b (linspace)."""
    try:
        if text.count(":") == 2 and "," not in text:
            a, b, n = text.split(":")
            n = int(n)
            if n < 1:
                raise ValueError
            return tuple(a_ + (float(b) - a_) * i / max(n - 1, 1) for a_ in [float(a)] for i in range(n))
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or START:STOP:COUNT, got {text!r}") from None


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def threshold_grid(text: str):
    """'START:STOP:STEP' (np.arange, the notebook's 0.1:1:0.1) or a comma list."""
    import numpy as np

    try:
        if text.count(":") == 2:
            a, b, s = (float(x) for x in text.split(":"))
            grid = np.arange(a, b, s)
        else:
            grid = np.array([float(x) for x in text.split(",") if x.strip()])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP or comma-separated thresholds, got {text!r}") from None
    if grid.size == 0:
        raise argparse.ArgumentTypeError(f"empty threshold grid {text!r}")
    return grid


def au_thresholds(text: str):
    vals = float_list(text)
    if len(vals) not in (1, 12):
        raise argparse.ArgumentTypeError(f"give 1 or 12 AU thresholds, got {len(vals)}")
    return vals[0] if len(vals) == 1 else vals


def smooth_spec(text: str) -> tuple[str, float | None, int]:
    """'FILTER:SIGMA:K', e.g. 'hsemotion:1e5:10' or 'box::50' (sigma unused by box filters)."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in FILTER_NAMES:
        raise argparse.ArgumentTypeError(f"expected FILTER:SIGMA:K with FILTER in {FILTER_NAMES}, got {text!r}")
    try:
        sigma = float(parts[1]) if parts[1] else None
        k = int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad sigma or k in {text!r}") from None
    return parts[0], sigma, k


def blend_weights(text: str) -> tuple[float, float, float]:
    vals = float_list(text)
    if len(vals) != 3 or any(not 0 <= v <= 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected three weights in [0, 1] for VA,EXPR,AU, got {text!r}")
    return vals


def is_ce_file(path: str) -> bool:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return f.readline().strip().startswith("image_location,Fearfully_Surprised")
