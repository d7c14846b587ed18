"""Command-line entry point: `hsemo-jax SUBCOMMAND ...`.

Thin by design: each subcommand is one module of `hsemo_jax.commands`, named after it, that
exposes `add_arguments(parser)` and `run(args) -> int` and calls the library. Modules are
imported only when their subcommand runs, and their `add_arguments` import nothing heavy, so
`hsemo-jax --help`, `hsemo-jax --version` and `hsemo-jax COMMAND --help` import neither JAX nor torch
(tests/test_cli_startup.py checks it).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from hsemo_jax import runtime
from hsemo_jax.errors import InputError, InputWarning, user_message

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("hsemo_jax.commands.predict", "per-frame emotions, valence/arousal of faces in a video, image or folder"),
    "convert": ("hsemo_jax.commands.convert", "convert a PyTorch checkpoint to an hsemo-jax model directory"),
    "export": ("hsemo_jax.commands.export", "export a model to ONNX or serialized StableHLO (CPU, CUDA, TPU) with its metadata"),
    "bench": ("hsemo_jax.commands.bench", "run a benchmark (backbones, postprocess, ...)"),
    "train-head": ("hsemo_jax.commands.train_head", "train the ABAW-7 multi-task head on a feature dataset"),
    "pretrain": ("hsemo_jax.commands.pretrain", "multi-task backbone pretraining from a config file"),
    "distill": ("hsemo_jax.commands.distill", "ABAW-2 multi-database teacher-student (EXPR + VA) training from a config file"),
    "build-dataset": ("hsemo_jax.commands.build_dataset", "build a TFDS ArrayRecord dataset (AffectNet, Aff-Wild2, C-EXPR) from your local copy"),
    "extract-features": ("hsemo_jax.commands.extract_features", "per-frame embeddings + scores of a converted model over a dataset or image folder"),
    "evaluate": ("hsemo_jax.commands.evaluate", "ABAW metrics (P_VA, P_EXPR, P_AU, P_MTL; C-EXPR KL, kappa) of a prediction file"),
    "sweep": ("hsemo_jax.commands.sweep", "grid search over smoothing / blending settings; prints the best, writes CSV"),
    "intensity": ("hsemo_jax.commands.intensity", "video-level emotion intensity (ABAW ERI/EMI): train a regressor on per-video feature statistics, predict a submission"),
}


def version() -> str:
    """`hsemo-jax X.Y.Z (jax A.B.C, flax D.E.F)`, from the installed packages' metadata (nothing imported)."""
    from importlib import metadata

    def of(dist, fallback="not installed"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return fallback

    from hsemo_jax import __version__

    return f"hsemo-jax {of('hsemo-jax', __version__)} (jax {of('jax')}, flax {of('flax')})"


class _VersionAction(argparse.Action):
    """--version: prints `version()`, looked up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """A usage error in one line, `hsemo-jax COMMAND: error: ...` and where the help is, without
    argparse's usage block before it (tens of lines for `predict`)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that subcommand's module is imported ("": none, for
    the top-level --help and --version)."""
    parser = _Parser(
        prog="hsemo-jax",
        description="Facial expression, valence/arousal and action-unit recognition with JAX/Flax ports "
        "of the HSEmotion models.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the versions of hsemo-jax, JAX and Flax and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if only in (None, name):
            importlib.import_module(module_name).add_arguments(p)
    return parser


def _print_input_warnings(command: str) -> None:
    """`InputWarning`s as one line each, `hsemo-jax COMMAND: warning: ...`; others as Python prints them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"hsemo-jax {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


# commands that run train steps: one CPU device (see hsemo_jax/runtime.py)
TRAINING = {"train-head", "pretrain", "distill"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    parser = build_parser(command if command in COMMANDS else "")  # an unknown one: argparse's error
    args = parser.parse_args(argv)  # --help, --version and usage errors exit here, before JAX is imported
    training = command in TRAINING or words[:2] == ["bench", "train"]
    runtime.configure(split_cpu=not training)  # imports JAX; before any command starts its backends
    _print_input_warnings(args.command)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (InputError, OSError) as e:  # bad input, or a path the system refuses: one line, no traceback
        print(f"hsemo-jax {args.command}: error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hsemo-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
