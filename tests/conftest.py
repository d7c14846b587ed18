import os
import sys

# Eight fake CPU devices so multi-device code paths are exercised on any machine.
# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the suite compiles afresh: no persistent compilation cache written to ~/.cache (test_runtime tests it)
os.environ.setdefault("HSEMO_JAX_COMPILATION_CACHE", "0")

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
def calibrate():
    """calibrate(model, arch, size=None) -> model: its batch norms' statistics recomputed on 8
    frames of the bundled clip (at `size` px, default the architecture's input size), so that
    its eval-mode outputs depend on the input. A randomly initialized network's do not (e.g.
    EfficientNet-B0's scores on two noise images are equal to the last bit), and a test comparing
    two computations of them cannot fail whatever one side does with the input."""
    from data_fixtures import clip_images
    from hsemo_jax.models import registry
    from hsemo_jax.models.recalibrate import recalibrate_batch_norms
    from hsemo_jax.models.transforms import preprocess_images

    def calibrate(model, arch: str, size: int | None = None):
        a = registry.get_arch(arch)
        size = size or a.input_size
        return recalibrate_batch_norms(model, [preprocess_images(clip_images(size), size, a.mean, a.std)])

    return calibrate


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, calibrate):
    """A converted MobileFaceNet with random weights (10 outputs: 8 expressions + V + A), its batch
    norms' statistics recomputed on frames of the bundled clip so that its outputs depend on the
    face (at initialization they are the same for every input to ~1e-5); shared by the predict,
    device-program and Python API tests."""
    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.models import registry

    info = ModelInfo.for_arch("mobilefacenet", 10)
    model = calibrate(registry.build("mobilefacenet", 10, seed=7), "mobilefacenet")
    out = tmp_path_factory.mktemp("models") / "mbf"
    save_model(model, info, out)
    return str(out)
