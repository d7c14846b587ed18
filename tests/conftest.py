import os
import sys

# Eight fake CPU devices so multi-device code paths are exercised on any machine.
# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Warm memory for XLA:CPU, as the CLI does (hsemo_jax/runtime.py): the suite runs faster.
from hsemo_jax import runtime  # noqa: E402

runtime.keep_freed_memory()

# PyTorch reference modules written from the spec; importable under the top-level
# names the original pickles use (e.g. `mobilefacenet`).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))


import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test counts as failed: parity tests must never be skipped there."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A converted MobileFaceNet with random weights (10 outputs: 8 expressions + V + A), shared by the
    predict, device-program and Python API tests."""
    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.models import registry

    out = tmp_path_factory.mktemp("models") / "mbf"
    save_model(registry.build("mobilefacenet", 10, seed=7), ModelInfo.for_arch("mobilefacenet", 10), out)
    return str(out)
