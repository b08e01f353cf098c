"""Training checkpoints (orbax) and the exported model checkpoint.

A training checkpoint ``MODEL_DIR/checkpoints/<step>/`` holds two orbax items:

* ``state``: the sharded `TrainState` (params, AdamW state, step, RNG), saved with ``StandardSave`` and restored
  with ``StandardRestore`` onto target shardings -- so a run can resume on a different mesh;
* ``meta``: JSON with the input pipeline's ``state()``, the step, and a fingerprint of every state array.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-save leaves no
half-written step that `all_steps()` would list. Damage after the fact (deleted or garbled files) makes either the
restore fail or the fingerprint disagree; the step is then moved aside to ``<step>.corrupt`` and the previous good
step is used.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

META_VERSION = 1
FINGERPRINT_RTOL = 1e-4  # resharded restores may sum in another order


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
        """Raises ValueError naming the field at fault."""
        if self.keep < 1:
            raise ValueError(f"CheckpointConfig.keep must be >= 1, got {self.keep}")


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used, with what to do about it."""


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore_latest` found."""

    step: int
    state: Any
    input_state: dict | None
    skipped: list[tuple[int, str]]  # damaged newer steps that were moved aside, with the reason


def _fingerprint_fn(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    # Sum of |x| per array in f32: cheap, sharding-agnostic, and changes when any stored chunk is garbled.
    return jnp.stack([jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves]) if leaves else jnp.zeros((0,))


_fingerprint = jax.jit(_fingerprint_fn)


def fingerprint(tree: Any) -> list[float]:
    """One float per array of ``tree`` (identical on every process)."""
    return np.asarray(jax.device_get(_fingerprint(tree)), dtype=np.float64).tolist()


class Checkpointer:
    """Periodic, atomic, keep-N training checkpoints in ``directory`` (one per step)."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig = CheckpointConfig()):
        config.validate()
        self.directory = pathlib.Path(directory).absolute()
        self.config = config
        self._manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
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

    def should_save(self, step: int, last_step: int) -> bool:
        """Periodic schedule plus the final step."""
        every = self.config.save_every
        return step == last_step or (every > 0 and step % every == 0)

    def save(self, step: int, state: Any, input_state: Mapping[str, Any] | None = None) -> None:
        """Starts saving ``state`` (and the JSON-serialisable input position) as ``step``; may return early."""
        if step in self._manager.all_steps():
            logger.info("checkpoint for step %d already exists; not overwriting", step)
            return
        meta = {"version": META_VERSION, "step": int(step), "input_state": input_state,
                "fingerprint": fingerprint(state)}
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

    def restore(self, step: int, target: Any) -> tuple[Any, dict | None]:
        """Restores ``step`` onto ``target`` (ShapeDtypeStructs with shardings); verifies the fingerprint.

        Raises CheckpointError when files are missing or damaged.
        """
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for missing or garbled files
            raise CheckpointError(f"checkpoint step {step} in {self.directory} cannot be read: "
                                  f"{type(e).__name__}: {str(e)[:500]}") from e
        meta = out["meta"]
        if not isinstance(meta, dict) or meta.get("version") != META_VERSION or "fingerprint" not in meta:
            raise CheckpointError(f"checkpoint step {step} in {self.directory}: meta item is missing or malformed")
        state = out["state"]
        got = np.asarray(fingerprint(state))
        want = np.asarray(meta["fingerprint"], dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=FINGERPRINT_RTOL, atol=1e-6,
                                                      equal_nan=True):
            bad = int(np.argmax(np.abs(got - want))) if got.shape == want.shape else -1
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory}: restored arrays do not match their saved "
                f"fingerprint (array #{bad}); the files are damaged")
        return state, meta.get("input_state")

    def restore_latest(self, target: Any) -> Restored | None:
        """Restores the newest readable checkpoint; damaged newer ones are reported and moved aside.

        Returns None when the directory holds no checkpoint at all; raises CheckpointError when every
        checkpoint is damaged.
        """
        skipped: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                state, input_state = self.restore(step, target)
            except CheckpointError as e:
                logger.error("%s -- falling back to the previous checkpoint", e)
                skipped.append((step, str(e)))
                self._quarantine(step)
                continue
            return Restored(step=step, state=state, input_state=input_state, skipped=skipped)
        if skipped:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory}: every step was damaged "
                f"({', '.join(str(s) for s, _ in skipped)}); delete the directory to start over")
        return None

    def _quarantine(self, step: int) -> None:
        # Keep the damaged files for inspection but out of orbax's sight, so the step can be saved again.
        src = self.directory / str(step)
        if jax.process_index() == 0 and src.exists():
            dst = self.directory / f"{step}.corrupt"
            if dst.exists():
                shutil.rmtree(dst)
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._manager.reload()


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
