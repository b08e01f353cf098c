"""Training checkpoints (orbax) and the exported model checkpoint.

A training checkpoint ``MODEL_DIR/checkpoints/<step>/`` holds two orbax items:

* ``state``: the sharded `TrainState` (params, AdamW state, step, RNG), saved with ``StandardSave`` and restored
  with ``StandardRestore`` onto target shardings -- so a run can resume on a different mesh;
* ``meta``: JSON with the input pipeline's ``state()``, the step, the shape and dtype of every state array, a
  fingerprint of every state array, and the run's own record (model config, gin bindings) from the caller.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-save leaves no
half-written step that `all_steps()` would list.

Nothing that is not proven damaged is moved or deleted. Before any restore the checkpoint's recorded structure is
compared with what the run asks for; a difference (another model config, say) is a `CheckpointMismatch` that names
the differing fields and touches nothing. Only a step whose structure matches but whose data cannot be read twice
in a row, or reads back different from its fingerprint, is moved aside to ``<step>.corrupt`` (kept for
inspection), and the previous step is used. Failures that say nothing about the files (out of memory, permission
denied, an unavailable network file system, anything unrecognised) stop the run and leave the files alone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from optiml_jax.errors import UserError

logger = logging.getLogger(__name__)

META_VERSION = 2  # 2 adds "tree" and "run"; version-1 steps are checked against orbax's own array metadata
FINGERPRINT_RTOL = 1e-4  # resharded restores may sum in another order
QUARANTINE_SUFFIX = ".corrupt"

# Restore failures that describe the files themselves (tensorstore/orbax wordings for missing, truncated or
# garbled data). Anything else is not taken as proof of damage.
_DAMAGE_MARKERS = ("NOT_FOUND", "DATA_LOSS", "Encountered error while reading", "corrupt", "Corrupt", "checksum",
                   "Unexpected end", "truncated")
# ... unless the failure is about the environment or the run's layout: these never condemn a checkpoint (a mesh
# that does not divide an array fails before any file is read).
_ENVIRONMENT_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "PERMISSION_DENIED",
                        "Permission denied", "UNAVAILABLE", "DEADLINE_EXCEEDED", "Stale file handle",
                        "Transport endpoint", "divisible", "sharding", "Sharding")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how training checkpoints are written.

    Attributes:
      save_every: save every this many steps (and always after the last step); <= 0 saves only at the end.
      keep: how many recent checkpoints to keep (at least 2, so that a damaged latest one has a fallback).
      async_save: write in a background thread while training continues.
    """

    save_every: int = 1000
    keep: int = 3
    async_save: bool = True

    def validate(self) -> None:
        """Raises UserError naming the field at fault."""
        if self.keep < 1:
            raise UserError(f"CheckpointConfig.keep must be >= 1, got {self.keep}")


class CheckpointError(UserError):
    """A checkpoint directory that cannot be used, with what to do about it."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint was written by a run with another structure (model config, state tree); nothing touched."""


class NoGoodCheckpoint(CheckpointError):
    """Every step was proven damaged and moved aside; starting over needs the user's explicit consent."""


class _Damaged(Exception):
    """Internal: a step whose files are proven damaged (the message says how)."""


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore_latest` found."""

    step: int
    state: Any
    input_state: dict | None
    skipped: list[tuple[int, str]]  # damaged newer steps that were moved aside, with the reason
    run: dict | None = None         # the run record saved with the step (see `Checkpointer.save`)


def _fingerprint_fn(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    # Sum of |x| per array in f32: cheap, sharding-agnostic, and changes when any stored chunk is garbled.
    return jnp.stack([jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves]) if leaves else jnp.zeros((0,))


_fingerprint = jax.jit(_fingerprint_fn)


def fingerprint(tree: Any) -> list[float]:
    """One float per array of ``tree`` (identical on every process)."""
    return np.asarray(jax.device_get(_fingerprint(tree)), dtype=np.float64).tolist()


def tree_spec(tree: Any) -> dict[str, list]:
    """``{"params/decoder/...": [shape, dtype]}`` for every array of ``tree`` (arrays or ShapeDtypeStructs)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): [list(x.shape), str(np.dtype(x.dtype))]
            for path, x in flat}


def tree_diff(stored: Mapping[str, list], wanted: Mapping[str, list], limit: int = 6) -> list[str]:
    """Human-readable differences between two `tree_spec`s (checkpoint vs. this run)."""
    diff = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k), wanted.get(k)
        if a is None:
            diff.append(f"{k}: absent from the checkpoint, this run has {tuple(b[0])} {b[1]}")
        elif b is None:
            diff.append(f"{k}: checkpoint has {tuple(a[0])} {a[1]}, absent from this run")
        elif list(a[0]) != list(b[0]) or a[1] != b[1]:
            diff.append(f"{k}: checkpoint {tuple(a[0])} {a[1]} vs this run {tuple(b[0])} {b[1]}")
    if len(diff) > limit:
        diff = diff[:limit] + [f"... and {len(diff) - limit} more"]
    return diff


def _is_environment_failure(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return isinstance(e, (MemoryError, PermissionError)) or any(m in text for m in _ENVIRONMENT_MARKERS)


def _is_damage(e: BaseException) -> bool:
    if _is_environment_failure(e):
        return False
    text = f"{type(e).__name__}: {e}"
    return isinstance(e, (json.JSONDecodeError, FileNotFoundError, EOFError)) or any(
        m in text for m in _DAMAGE_MARKERS)


def _drop_closed_loop_callbacks() -> None:
    """Silences orbax's "Event loop is closed" callbacks after a failed restore (orbax 0.12.8).

    A restore that fails (a damaged step we then report) leaves orbax futures whose done-callbacks are posted to
    an event loop orbax has already closed; Python prints each as an "Exception ignored" traceback, burying the
    run's one-line report. Only exactly that RuntimeError is dropped; everything else reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_optiml_closed_loop_filter", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            logger.debug("ignored an orbax callback posted to a closed event loop")
            return
        previous(unraisable)

    hook._optiml_closed_loop_filter = True
    sys.unraisablehook = hook


_UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")  # asyncio's words


class _DamagedReadTaskFilter(logging.Filter):
    """Drops asyncio's "Task/Future exception was never retrieved" reports of orbax read tasks that failed on damaged
    files (orbax 0.12.8 / tensorstore).

    When a restore fails on a damaged step, orbax's gather raises the first array's error, which `Checkpointer`
    reports in one line; the other arrays' failed reads are collected later and asyncio logs each with its
    traceback, at a moment that depends on the garbage collector. Only failures that `_is_damage` recognises are
    dropped; any other unretrieved task exception is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (exc is not None and record.getMessage().startswith(_UNRETRIEVED) and _is_damage(exc)):
            logger.debug("dropped asyncio's report of a failed read of a damaged checkpoint: %s", exc)
            return False
        return True


def _drop_damaged_read_task_reports() -> None:
    """Installs `_DamagedReadTaskFilter` on the asyncio logger (once)."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _DamagedReadTaskFilter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_DamagedReadTaskFilter())


class Checkpointer:
    """Periodic, atomic, keep-N training checkpoints in ``directory`` (one per step)."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig = CheckpointConfig()):
        _drop_closed_loop_callbacks()
        _drop_damaged_read_task_reports()
        config.validate()
        self.directory = pathlib.Path(directory).absolute()
        self.config = config
        self._manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        # cleanup_tmp_directories removes the half-written steps of a killed run; the caller must hold the run
        # directory's lock (optiml_jax.run_lock) so that these are never a live run's saves in progress.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.config.keep, create=True, enable_async_checkpointing=self.config.async_save,
            cleanup_tmp_directories=True)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        """Steps with a committed checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def quarantined(self) -> list[pathlib.Path]:
        """Steps moved aside as damaged (by this or an earlier run), oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted((p for p in self.directory.iterdir() if QUARANTINE_SUFFIX in p.name and p.is_dir()),
                      key=lambda p: p.name)

    def should_save(self, step: int, last_step: int) -> bool:
        """Periodic schedule plus the final step."""
        every = self.config.save_every
        return step == last_step or (every > 0 and step % every == 0)

    def save(self, step: int, state: Any, input_state: Mapping[str, Any] | None = None,
             run: Mapping[str, Any] | None = None) -> None:
        """Starts saving ``state`` as ``step``; may return before the files are committed (see `wait`).

        Args:
          step: the step number (the directory name).
          state: the pytree of (sharded) arrays.
          input_state: the JSON-serialisable input pipeline position.
          run: the run's JSON-serialisable record (e.g. model config and gin bindings), returned on restore and
            handed to the ``check_run`` of `restore_latest`.
        """
        if step in self._manager.all_steps():
            logger.info("checkpoint for step %d already exists; not overwriting", step)
            return
        meta = {"version": META_VERSION, "step": int(step), "input_state": input_state,
                "fingerprint": fingerprint(state), "tree": tree_spec(state), "run": run}
        json.dumps(meta)  # fail now, with the offending value, rather than in the background thread
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    # ---- restore --------------------------------------------------------------------------------------------
    def read_meta(self, step: int) -> dict:
        """The ``meta`` item of ``step``; raises `_Damaged` when orbax cannot parse what it committed."""
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises FileNotFoundError, JSONDecodeError, ... for a broken item
            if not _is_damage(e):
                raise CheckpointError(f"checkpoint step {step} in {self.directory}: its meta item cannot be read "
                                      f"({type(e).__name__}: {str(e)[:300]}); nothing was moved") from e
            raise _Damaged(f"its meta item cannot be read ({type(e).__name__}: {str(e)[:300]})") from e
        if not isinstance(meta, dict) or "fingerprint" not in meta or meta.get("version") not in (1, META_VERSION):
            raise _Damaged("its meta item is malformed")
        return meta

    def _stored_tree(self, step: int, meta: dict) -> dict[str, list]:
        if "tree" in meta:
            return meta["tree"]
        # Version-1 steps: orbax's own array metadata (the state item's _METADATA file).
        try:
            md = self._manager.item_metadata(step)["state"]
        except Exception as e:  # orbax raises many types for an unreadable _METADATA
            if _is_environment_failure(e):
                raise CheckpointError(f"checkpoint step {step} in {self.directory}: its metadata cannot be read "
                                      f"({type(e).__name__}: {str(e)[:300]}); nothing was moved") from e
            raise _Damaged(f"its array metadata cannot be read ({type(e).__name__}: {str(e)[:300]})") from e
        tree = getattr(md, "tree", md)
        return tree_spec(tree)

    def check_structure(self, step: int, target: Any, check_run: Callable[[dict | None], None] | None = None,
                        meta: dict | None = None) -> dict:
        """Raises `CheckpointMismatch` unless ``step`` holds what the run asks for; returns the step's meta.

        ``check_run(meta["run"])`` raises (a UserError naming the differing fields) when the run's own record,
        e.g. its model config, disagrees; it runs first because it names the cause better than array shapes.
        """
        meta = self.read_meta(step) if meta is None else meta
        if check_run is not None:
            try:
                check_run(meta.get("run"))
            except CheckpointMismatch:
                raise
            except UserError as e:
                raise CheckpointMismatch(f"{e} (checkpoint {self.directory / str(step)} left untouched)") from None
        diff = tree_diff(self._stored_tree(step, meta), tree_spec(target))
        if diff:
            raise CheckpointMismatch(
                f"checkpoint {self.directory / str(step)} holds another state tree than this run builds "
                f"({'; '.join(diff)}); it was left untouched. Resume with the configuration that wrote it "
                f"(MODEL_DIR/config.gin), or choose another MODEL_DIR")
        return meta

    def _read(self, step: int, target: Any) -> tuple[Any, dict]:
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for missing or garbled files
            if _is_damage(e):
                raise _Damaged(f"its files cannot be read ({type(e).__name__}: {str(e)[:300]})") from e
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} could not be restored ({type(e).__name__}: "
                f"{str(e)[:300]}); this does not show that the files are damaged, so nothing was moved. Fix the "
                "cause (memory, permissions, file system) and rerun") from e
        state, meta = out["state"], out["meta"]
        got = np.asarray(fingerprint(state))
        want = np.asarray(meta["fingerprint"], dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=FINGERPRINT_RTOL, atol=1e-6,
                                                      equal_nan=True):
            bad = int(np.argmax(np.abs(got - want))) if got.shape == want.shape else -1
            raise _Damaged(f"its arrays do not match their saved fingerprint (array #{bad})")
        return state, meta

    def restore(self, step: int, target: Any, check_run: Callable[[dict | None], None] | None = None
                ) -> tuple[Any, dict]:
        """Restores ``step`` onto ``target`` (ShapeDtypeStructs with shardings) after `check_structure`.

        Returns (state, meta). Raises CheckpointMismatch for another structure, CheckpointError when the files are
        damaged (read twice, so a passing hiccup is not mistaken for damage) or the restore fails for another
        reason. Never moves anything.
        """
        try:
            self.check_structure(step, target, check_run)
            try:
                return self._read(step, target)
            except _Damaged:
                logger.warning("checkpoint step %d failed to restore; reading it once more", step)
                return self._read(step, target)
        except _Damaged as e:
            raise _StepDamaged(step, f"checkpoint step {step} in {self.directory} is damaged: {e}") from e

    def restore_latest(self, target: Any, check_run: Callable[[dict | None], None] | None = None
                       ) -> Restored | None:
        """Restores the newest good checkpoint; newer steps proven damaged are reported and moved aside.

        Returns None when the directory holds no checkpoint. Raises CheckpointMismatch (nothing touched) when the
        checkpoints were written with another structure, NoGoodCheckpoint when every step was damaged, and
        CheckpointError for failures that do not prove damage.
        """
        skipped: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, target, check_run)
            except _StepDamaged as e:
                logger.error("%s -- moving it aside and falling back to the previous checkpoint", e)
                skipped.append((step, str(e)))
                self._quarantine(step)
                continue
            return Restored(step=step, state=state, input_state=meta.get("input_state"), skipped=skipped,
                            run=meta.get("run"))
        if skipped:
            raise NoGoodCheckpoint(
                f"no readable checkpoint in {self.directory}: every step was damaged and moved aside "
                f"({', '.join(str(s) for s, _ in skipped)}; kept as <step>{QUARANTINE_SUFFIX})")
        return None

    def _quarantine(self, step: int) -> pathlib.Path:
        # Keep the damaged files for inspection but out of orbax's sight, so the step can be saved again. An
        # earlier quarantined copy of the same step is never overwritten.
        src = self.directory / str(step)
        dst = self.directory / f"{step}{QUARANTINE_SUFFIX}"
        n = 2
        while dst.exists():
            dst = self.directory / f"{step}{QUARANTINE_SUFFIX}-{n}"
            n += 1
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._manager.reload()
        return dst


class _StepDamaged(CheckpointError):
    """A step proven damaged (`Checkpointer.restore` read it twice, or its fingerprint disagrees)."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


# ---- exported model checkpoints (config.json + params/ + tokenizer/) -----------------------------------------

def check_model_checkpoint_dir(path: str | os.PathLike, what: str = "INIT_CHECKPOINT") -> pathlib.Path:
    """Validates a model checkpoint directory, raising CheckpointError that says what to do."""
    p = pathlib.Path(path).expanduser()
    if not p.is_dir():
        raise CheckpointError(
            f"{what}={str(path)!r}: no such directory. Point it at a directory written by "
            "`optiml_jax.models.convert` (config.json + params/), e.g. convert a Hugging Face OPT checkpoint "
            "first, or set INIT_CHECKPOINT=None to train from scratch.")
    missing = [n for n in ("config.json", "params") if not (p / n).exists()]
    if missing:
        raise CheckpointError(
            f"{what}={str(path)!r}: not a model checkpoint, missing {missing}. Expected config.json + params/ "
            "as written by `optiml_jax.models.convert.save_checkpoint`.")
    return p


def load_params(path: str | os.PathLike, target: Any, what: str = "INIT_CHECKPOINT") -> Any:
    """Restores the ``params/`` of a model checkpoint onto ``target`` (ShapeDtypeStructs with shardings).

    Each host reads only the shards its devices hold; dtypes are cast to the target's (fp32 master weights).
    """
    p = check_model_checkpoint_dir(path, what)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore((p / "params").absolute(), target)
    except Exception as e:
        raise CheckpointError(
            f"{what}={str(path)!r}: params/ could not be restored onto the model's parameters "
            f"({type(e).__name__}: {str(e)[:500]}). Check that the checkpoint's config.json matches the model "
            "config of this run.") from e
