"""Where the real data lives: the one resolver of the data directory (gin ``data_dir.path``, ``$OPTIML_DATA_DIR``).

Every module that needs the data dir asks here, so the order of precedence and the error for a missing folder are
written once; tools that merely prefer the real data when present (benchmarks, tests) use `find_real_data_dir`.
Without a data dir the library works on the embedded suite only; fetched archives (BIG-bench) and derived files go
to `user_cache_dir` unless told otherwise.
"""
from __future__ import annotations

import os
import pathlib
from typing import Iterable

import gin

DATA_DIR_ENV = "OPTIML_DATA_DIR"


def user_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/optiml_jax`` (default ``~/.cache/optiml_jax``): where downloads and caches go by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "optiml_jax"


@gin.configurable("data_dir")
def data_dir(path: str | None = None) -> str | None:
    """The real-data directory: the gin binding ``data_dir.path`` or else ``$OPTIML_DATA_DIR``.

    Returns None when neither is set (then only the embedded suite is available). A configured folder that does
    not exist raises FileNotFoundError naming where the setting came from.
    """
    chosen = path if path else os.environ.get(DATA_DIR_ENV) or None
    if chosen is not None and not pathlib.Path(chosen).is_dir():
        origin = "gin binding data_dir.path" if path else f"${DATA_DIR_ENV}"
        raise FileNotFoundError(f"data directory {chosen!r} (from {origin}) does not exist")
    return chosen


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> pathlib.Path | None:
    """An explicit directory if given (it must exist), else `data_dir()` (None: embedded suite only)."""
    if explicit is not None:
        p = pathlib.Path(explicit)
        if not p.is_dir():
            raise FileNotFoundError(f"data_dir {str(p)!r} does not exist or is not a directory")
        return p
    d = data_dir()
    return pathlib.Path(d) if d else None


def fetch_dir(explicit: str | os.PathLike | None = None) -> pathlib.Path:
    """Where fetched data is written when no folder is given: ``explicit``, ``$OPTIML_DATA_DIR``, else the cache."""
    if explicit is not None:
        return pathlib.Path(explicit)
    env = os.environ.get(DATA_DIR_ENV)
    return pathlib.Path(env) if env else user_cache_dir()


def data_dir_candidates(explicit: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """Where to look for fetched data, in order: ``explicit``, ``$OPTIML_DATA_DIR``, `user_cache_dir` (deduped).

    The user cache is always searched because a configured data dir may be read-only (the shared data in CI), in
    which case a fetch has to be pointed elsewhere.
    """
    out: list[pathlib.Path] = []
    for d in (explicit, os.environ.get(DATA_DIR_ENV), user_cache_dir()):
        if d:
            p = pathlib.Path(d)
            if p not in out:
                out.append(p)
    return out


def find_real_data_dir(explicit: str | os.PathLike | None = None, *,
                       fallbacks: Iterable[str | os.PathLike | None] = (),
                       marker: str = "superni") -> pathlib.Path | None:
    """The first of ``explicit``, ``$OPTIML_DATA_DIR`` and ``fallbacks`` that holds the real data, else None.

    "Holds the real data" means has a ``marker`` folder (SuperNI's tasks by default). For tools that use the real
    data when it is around and fall back otherwise (benchmarks, the test suite's ``real_data_dir`` fixture with
    ``../shared/data`` beside the checkout as fallback): unlike `data_dir`, a set folder without the data is passed
    over, not an error.
    """
    for d in (explicit, os.environ.get(DATA_DIR_ENV), *fallbacks):
        if d and (pathlib.Path(d) / marker).is_dir():
            return pathlib.Path(d)
    return None
