"""OPT-IML Bench tasks: catalogue, loaders, prompts, mixtures and the seqio registry.

Importing this package registers every task and mixture with seqio (`registry.register_all`) for the data dir
configured by ``OPTIML_DATA_DIR`` or gin (without one: the embedded suite only). Call
``registry.register_all(data_dir=..., force=True)`` to register another data dir, split or vocabulary.
"""
import logging as _logging
import os as _os

from optiml_jax.tasks.configurables import import_configurables  # noqa: F401 (entry points call it)

_log = _logging.getLogger(__name__)


def _register_on_import() -> None:
    if _os.environ.get("OPTIML_SKIP_REGISTRATION"):
        return
    from optiml_jax.tasks import registry

    try:
        registry.register_all()
    except ImportError as err:  # a stripped-down install without the data layer or seqio
        _log.warning("optiml_jax.tasks: seqio registration skipped (%s)", err)
    except (FileNotFoundError, ValueError) as err:
        # A bad data dir must not make `import` itself fail (the CLIs report it with a clear message when they
        # build their inputs); say so loudly instead of registering a partial benchmark.
        _log.warning("optiml_jax.tasks: no tasks registered on import: %s", err)


_register_on_import()
