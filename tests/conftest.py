"""Shared test set-up: 8 fake CPU devices, quiet TensorFlow, the real data directory."""
import os
import pathlib

# Must happen before the first `import jax` anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("USE_TF", "0")  # transformers 4.x would import TensorFlow otherwise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from optiml_jax.data_dir import find_real_data_dir  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


def _real_data_dir() -> pathlib.Path | None:
    """$OPTIML_DATA_DIR, else ../shared/data beside the checkout: the first that holds SuperNI, else None."""
    return find_real_data_dir(fallbacks=(REPO.parent / "shared" / "data",))


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
    """The real task data (../shared/data or $OPTIML_DATA_DIR); skips with a clear message when absent."""
    d = _real_data_dir()
    if d is None:
        pytest.skip("no real data directory: set OPTIML_DATA_DIR or place the data at ../shared/data")
    return d


@pytest.fixture(autouse=True)
def _unlock_gin_after_each_test():
    """An entry point called in-process (`main([...])`) parses and finalizes gin's global config; a later test
    that first imports a module defining configurables (e.g. `optiml_jax.experiments`) would then fail on the
    locked config only because of the order tests run in. Each test leaves gin unlocked."""
    yield
    import gin

    if gin.config_is_locked():
        gin.clear_config()
