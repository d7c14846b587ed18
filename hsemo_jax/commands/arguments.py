"""Argument types and argument blocks that several subcommands share. Imports nothing heavy.

    add_config_arguments, load_run_config   train-head, pretrain, distill: a config file, --set, --out
    add_scoring_arguments                   evaluate, sweep: a second model to blend, AU thresholds
    add_dataset_writing_arguments           build-dataset, extract-features: bad images, overwrite, progress
    float_list, smooth_spec, ...            argument types of evaluate and sweep
"""
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
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals:  # an empty list would silently mean the default
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or START:STOP:COUNT, got {text!r}")
    return vals


def int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals:  # an empty list would silently mean the default
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return vals


def threshold_grid(text: str):
    """'START:STOP:STEP' (np.arange, the notebook's 0.1:1:0.1) or a comma list."""
    import numpy as np

    try:
        if text.count(":") == 2:
            a, b, s = (float(x) for x in text.split(":"))
            if s == 0:
                raise argparse.ArgumentTypeError(f"STEP must not be 0 in {text!r}")
            grid = np.arange(a, b, s)
        else:
            grid = np.array([float(x) for x in text.split(",") if x.strip()])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP or comma-separated thresholds, got {text!r}") from None
    if grid.size == 0:
        raise argparse.ArgumentTypeError(f"empty threshold grid {text!r}")
    if not ((grid > 0) & (grid < 1)).all():  # as --au-thresholds: 0 or 1 would decide every frame alike
        raise argparse.ArgumentTypeError(f"thresholds must lie between 0 and 1 (exclusive), got {text!r} "
                                         f"({', '.join(f'{t:g}' for t in grid)})")
    return grid


def au_thresholds(text: str):
    vals = float_list(text)
    if len(vals) not in (1, 12):
        raise argparse.ArgumentTypeError(f"give 1 or 12 AU thresholds, got {len(vals)}")
    if not all(0 < v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"AU thresholds must lie between 0 and 1 (exclusive), got {text!r}")
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


def check_prediction_files(pred: str, gt: str | None, blend_weights, blend_with: str | None) -> None:
    """evaluate's and sweep's checks before a file is read: --blend-weights only with --blend-with
    (else silently unused), and GT not PRED itself (else a field-count error on line 2 of one)."""
    from hsemo_jax.errors import InputError
    from hsemo_jax.fileio import same_path

    if blend_weights and not blend_with:
        raise InputError("--blend-weights needs --blend-with")
    if gt and same_path(pred, gt):
        raise InputError(f"{gt}: given as both the predictions and the ground truth")


def add_config_arguments(p: argparse.ArgumentParser, *, set_example: str) -> None:
    """`--out RUN`, `--set SECTION.KEY=VALUE` (repeatable) and `--describe-config` of the training commands."""
    p.add_argument("--out", help="run directory (overrides run_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=f"override a config field (repeatable), e.g. --set {set_example}")
    p.add_argument("--describe-config", action="store_true",
                   help="print the config fields this command reads, with defaults and documentation, and exit")


CONFIG_PATH_KEYS = ("data.train", "data.val", "run_dir", "model.init")


def load_run_config(config, args: argparse.Namespace, flags, path_keys=CONFIG_PATH_KEYS):
    """The training `Config` from the file `config` (None: defaults) with the `--set` overrides, then
    the command's own flags as (config key, value) pairs, those given (not None or empty) winning."""
    from hsemo_jax.train.config import load_config

    overrides = list(args.overrides) + [f"{key}={value}" for key, value in flags if value]
    return load_config(config, _quote_paths(overrides, path_keys))


def _quote_paths(overrides: list[str], keys=CONFIG_PATH_KEYS) -> list[str]:
    """Paths on the command line are strings, never TOML values ('1e-3' stays a number elsewhere)."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq:  # no '=': left for load_config's "expected section.key=VALUE"
            out.append(o)
            continue
        if key.strip() in keys and not value.startswith('"'):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"{key}={value}")
    return out


def add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    """`--blend-with`, `--au-thresholds`, `--allow-missing` of evaluate and sweep."""
    p.add_argument("--blend-with", metavar="PRED_B",
                   help="second model's MTL predictions of the same images to blend with (see --blend-weights)")
    p.add_argument("--au-thresholds", type=au_thresholds, default=0.5, metavar="T|T1,...,T12",
                   help="AU decision threshold(s) in (0, 1) for P_AU (default 0.5)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip labelled ground-truth rows that have no prediction instead of failing")


def add_dataset_writing_arguments(p: argparse.ArgumentParser) -> None:
    """`--on-bad-image`, `--overwrite`, `--no-progress` of build-dataset and extract-features."""
    p.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                   help="missing or undecodable image: skip it and report it (default), or stop")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output of this command (never a folder of other things)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
