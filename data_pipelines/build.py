"""Build a dataset atomically, and open a built one as random-access data sources.

Layout written (standard TFDS, ArrayRecord files, readable without TensorFlow)::

    DATA_DIR/<name>[/<config>]/<version>/
        dataset_info.json, features.json, <name>-<split>.array_record-XXXXX-of-YYYYY
        build_report.json     written/skipped counts per split, skip reasons and names

Each config is prepared in a temporary folder inside DATA_DIR and renamed into place only when
complete: a build that fails (malformed annotation, bad image under policy 'error', Ctrl-C)
leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_pipelines import BUILDERS, builder_class
from hsemo_jax.errors import InputError
from hsemo_jax.fileio import replace_directory

REPORT_FILE = "build_report.json"


@dataclass(frozen=True)
class BuildResult:
    name: str  # "affectnet", "aff_wild2/expr", ...
    path: Path  # the version folder
    report: dict  # {split: {"written", "skipped", "reasons": {reason: {"count", "names"}}}}


def _configs(name: str) -> tuple[str, list[str | None]]:
    base, _, config = name.partition("/")
    cls = builder_class(base)
    known = [c.name for c in cls.BUILDER_CONFIGS]
    if config:
        if config not in known:
            raise InputError(f"{base} has no config {config!r}; expected one of {', '.join(known) or 'none'}")
        return base, [config]
    return base, known or [None]


def build_dataset(name: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
                  on_bad_image: str = "skip", overwrite: bool = False, workers: int | None = None,
                  progress: bool = True, **builder_kwargs) -> list[BuildResult]:
    """Build dataset `name` (``affectnet``, ``s_aff_wild2``, ``aff_wild2[/expr|va|au]``, ``c_expr``).

    ``aff_wild2`` alone builds every config whose challenge folder exists in `manual_dir`.
    builder_kwargs go to the builder (e.g. ``frame_format='jpg'`` for c_expr).
    Returns one BuildResult per config built.
    """
    import tensorflow_datasets as tfds

    manual_dir = Path(manual_dir).absolute()
    if not manual_dir.is_dir():
        raise InputError(f"--manual-dir {manual_dir} is not a folder")
    data_dir = Path(data_dir).absolute()
    if data_dir.exists() and not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir} is a file, not a folder")
    base, configs = _configs(name)
    if base == "aff_wild2" and "/" not in name:
        from data_pipelines.aff_wild2 import CHALLENGES, annotations_root

        ann = annotations_root(manual_dir)
        configs = [c for c in configs if ann is not None and (ann / CHALLENGES[c]).is_dir()]
        if not configs:
            raise InputError(f"{manual_dir}: none of {', '.join(CHALLENGES.values())} found")
    (tfds.enable_progress_bar if progress else tfds.disable_progress_bar)()
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return [_build_one(base, config, manual_dir, data_dir, on_bad_image, overwrite, workers,
                           progress, builder_kwargs) for config in configs]
    except BaseException:
        if created:  # a failed first build leaves no empty --data-dir behind
            with contextlib.suppress(OSError):
                data_dir.rmdir()
        raise


def _build_one(base, config, manual_dir, data_dir, on_bad_image, overwrite, workers, progress, kwargs):
    import tensorflow_datasets as tfds

    cls = builder_class(base)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base}.build-", dir=data_dir))
    try:
        builder = cls(config=config, data_dir=str(tmp), file_format="array_record",
                      on_bad_image=on_bad_image, workers=workers, **kwargs)
        final = data_dir / Path(builder.data_dir).relative_to(tmp)
        if final.exists() and not overwrite:
            raise InputError(f"{final} already exists (pass --overwrite to rebuild it)")
        # tfds prints "Downloading and preparing..." to stdout; keep stdout for the results.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(sys.stderr if progress else devnull):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
        report = builder.log.report()
        for split, info in builder.info.splits.items():  # splits with no example at all
            report.setdefault(split, {"written": 0, "skipped": 0, "reasons": {}})
            if info.num_examples != report[split]["written"]:
                raise RuntimeError(f"{split}: tfds wrote {info.num_examples} examples, "
                                   f"the builder counted {report[split]['written']}")
        built = Path(builder.data_dir)
        (built / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
        replace_directory(built, final)
        return BuildResult(base + (f"/{config}" if config else ""), final, report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_version_dir(path: str | os.PathLike):
    """A built dataset's version folder from itself or from ``DATA_DIR/<name>[/<config>]``
    (the highest version there), as an ``etils.epath.Path``: local, or on cloud storage
    (``gs://...``) where etils can read it."""
    from etils import epath

    path = epath.Path(path)
    if (path / "dataset_info.json").is_file():
        return path
    versions = sorted((p for p in path.glob("*") if (p / "dataset_info.json").is_file()),
                      key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split(".")))
    if not versions:
        raise InputError(f"{path} is not a built dataset (no dataset_info.json in it or in a "
                         f"version folder below it); build one with `hsemo-jax build-dataset`")
    return versions[-1]


def open_dataset(path: str | os.PathLike, split: str | None = None):
    """Random-access data source(s) of a built dataset: ``{split: source}``, or one split.

    A source has ``len()`` and ``source[i] -> dict`` of numpy values (text and image fields as
    bytes); it can feed ``grain.MapDataset.source`` directly. No TensorFlow is imported.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(find_version_dir(path)))
    sources = builder.as_data_source()
    if split is None:
        return sources
    if split not in sources:
        raise InputError(f"{path}: no split {split!r}; available: {', '.join(sources)}")
    return sources[split]


def read_report(path: str | os.PathLike) -> dict:
    return json.loads((find_version_dir(path) / REPORT_FILE).read_text())


__all__ = ["BUILDERS", "BuildResult", "build_dataset", "find_version_dir", "open_dataset", "read_report"]
