"""`hsemo-jax --help`, `--version` and `predict --help` answer without importing JAX (or torch, or OpenCV)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "torch", "cv2")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["predict", "--help"], ["evaluate", "--help"]])
def test_help_and_version_import_no_heavy_module(argv):
    code = (
        "import sys\n"
        "from hsemo_jax.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout, res.stdout[-500:]
    if argv == ["--version"]:
        from importlib import metadata

        import hsemo_jax

        first = res.stdout.splitlines()[0]
        try:
            expected = metadata.version("hsemo-jax")
        except metadata.PackageNotFoundError:
            expected = hsemo_jax.__version__
        assert first.startswith(f"hsemo-jax {expected} (jax {metadata.version('jax')}, flax "), first
    else:
        assert "usage: hsemo-jax" in res.stdout
