"""Run code with some project modules as they were at another git revision: before/after in one process.

A before/after figure measured in two runs on this machine mixes the change with whatever else the machine did
in between; measured round-robin in one process (`bench.common.interleaved_times`) both sides see the same
noise. `modules_at(rev, names)` swaps the named modules' namespaces for their source at ``rev`` for the
duration of a ``with`` block, so a step built and traced inside it is the old program.

Limits: the swap replaces the module object's attributes, so it reaches callers that look names up on the
module (``losses.cross_entropy_sums``, the project's style) but not names bound by ``from m import f`` before
the swap; the old source must import against today's tree.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import pathlib
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

_REPO = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _namespace_at(rev: str, name: str) -> dict[str, Any]:
    """The namespace of module ``name`` executed from its source at git revision ``rev`` (cached)."""
    path = pathlib.Path(*name.split(".")).with_suffix(".py").as_posix()
    try:
        source = subprocess.run(["git", "-C", str(_REPO), "show", f"{rev}:{path}"], check=True,
                                capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise ValueError(f"cannot read {path} at revision {rev!r}: {e.stderr.strip()}") from None
    origin = f"{rev}:{path}"
    namespace: dict[str, Any] = {"__name__": name, "__file__": origin, "__package__": name.rpartition(".")[0]}
    exec(compile(source, origin, "exec"), namespace)  # noqa: S102 - the project's own history, by design
    return namespace


def resolve(rev: str) -> str:
    """The full commit hash of ``rev`` (so results name exactly what was measured)."""
    try:
        return subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                              check=True, capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        raise ValueError(f"unknown git revision {rev!r}") from None


@contextlib.contextmanager
def modules_at(rev: str, names: Sequence[str]) -> Iterator[None]:
    """Inside the block, each module in ``names`` (imported if needed) holds its definitions from ``rev``."""
    saved = []
    try:
        for name in names:
            old = _namespace_at(rev, name)
            live = importlib.import_module(name)
            saved.append((live, dict(vars(live))))
            vars(live).update({k: v for k, v in old.items() if k not in ("__name__", "__file__", "__package__")})
        yield
    finally:
        for live, attrs in reversed(saved):
            vars(live).clear()
            vars(live).update(attrs)
