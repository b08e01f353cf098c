"""The task layer's gin configuration: importing its configurables and parsing gin for it alone.

Kept apart from the package ``__init__`` (which registers the seqio tasks on import) so that the cache and its
worker processes can configure gin without importing the package that imports them.
"""
from __future__ import annotations

from typing import Iterable

import gin

from optiml_jax import errors, gin_utils


class TaskGinError(errors.UserError):
    """A gin file or binding given to a task-layer command does not parse."""


def import_configurables() -> None:
    """Imports every task-layer module that declares gin configurables (data_dir, the splits, mixture_config,
    leakage_decisions, the embedded tokenizer). Entry points call it before parsing gin: gin refuses new
    configurables once locked."""
    from optiml_jax import data_dir  # noqa: F401
    from optiml_jax.tasks import embedded_vocab, leakage, mixtures, splits  # noqa: F401


def parse_task_gin(files: Iterable[str], bindings: Iterable[str]) -> None:
    """Parses gin files / bindings for the task layer: user modules they import register their seqio Tasks,
    ``mixture_config`` and the split definitions are bound. Training gin files may be given (their
    ``include``s resolve as in training); bindings of configurables outside the task layer (the model, the
    trainer) are skipped, since a task-layer command neither builds nor trains a model."""
    for path in gin_utils.DEFAULT_SEARCH_PATHS:
        gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), skip_unknown=True)
    except (ValueError, ImportError, SyntaxError, OSError) as e:   # gin's parse errors are SyntaxErrors
        raise TaskGinError(f"gin: {e}") from None
