"""The resumable result files of one evaluation directory: run.json, one summary and one predictions file per
finished unit, and the writes of the output process.

Layout under an evaluation's ``output_dir`` (`optiml_jax.evaluation.runner` writes it for every protocol):

* ``run.json``: the model's name, a fingerprint of its parameters and the protocol's unit settings; a later run
  in the same directory with other weights or settings is refused rather than mixed in;
* ``predictions/<unit key>.jsonl``: a unit's per-example records, written first;
* ``tasks/<unit key>.json``: the unit's summary, written last and atomically: its presence is what marks the
  unit as done, so a restarted (possibly killed) run loads it instead of recomputing the unit.

Every process of a multi-host evaluation computes the same results; only the output process writes them, and
process 0's view of what is finished decides for all, so that every process skips the same units.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np


def params_fingerprint(params: Any) -> str:
    """A short fingerprint of a parameter tree (shapes and a checksum), to detect resuming with other weights."""
    import jax
    import jax.numpy as jnp

    leaves = jax.tree_util.tree_leaves_with_path(params)
    h = hashlib.sha1()
    for path, leaf in leaves[:4] + leaves[-2:]:
        # Summed on the devices: the result is replicated, so every process of a multi-host run can read it
        # (np.asarray on a parameter sharded over several hosts fails). Rounded so that the summation order of
        # one mesh or another does not change the fingerprint.
        total = float(jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{tuple(leaf.shape)}{total:.4e}".encode())
    h.update(str(len(leaves)).encode())
    return h.hexdigest()[:16]


def writes() -> bool:
    """Whether this process writes the files (process 0 of a multi-host evaluation; always on one host)."""
    from optiml_jax.partitioning import is_output_process

    return is_output_process()


def makedirs(*paths: str) -> None:
    """Creates the directories (output process only)."""
    if writes():
        for p in paths:
            os.makedirs(p, exist_ok=True)


def write_text(path: str, text: str) -> None:
    """Writes a text file (output process only)."""
    if writes():
        with open(path, "w") as f:
            f.write(text)


def write_json(path: str, obj: Any) -> None:
    """Writes a JSON file atomically (output process only): a killed run never leaves a half-written result."""
    if not writes():
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
    os.replace(tmp, path)


def prepare(output_dir: str, meta: dict) -> None:
    """Creates ``tasks/`` and ``predictions/`` and checks or writes ``run.json``: ``meta`` ({"model",
    "fingerprint", "settings"}) must match the fingerprint and settings of results already there."""
    makedirs(*(os.path.join(output_dir, sub) for sub in ("tasks", "predictions")))
    path = os.path.join(output_dir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        for key in ("fingerprint", "settings"):
            if old.get(key) != meta[key]:
                raise ValueError(
                    f"{output_dir} holds results of another evaluation ({key} differs: {old.get(key)} vs "
                    f"{meta[key]}); use a fresh output directory or delete that one"
                )
    write_json(path, meta)


def finished_unit(output_dir: str, key: str) -> dict | None:
    """The saved summary of an evaluation unit finished by an earlier (possibly killed) run, else None."""
    path = os.path.join(output_dir, "tasks", key + ".json")
    exists = os.path.exists(path)
    import jax

    if jax.process_count() > 1:
        # Process 0's view decides, so that all processes skip (or compute) the same units in step.
        from jax.experimental import multihost_utils

        exists = bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))
        if exists and not os.path.exists(path):
            raise FileNotFoundError(f"{path}: written by process 0 but not visible here; a resumed multi-host "
                                    "evaluation needs an output directory that every host sees")
    if not exists:
        return None
    with open(path) as f:
        return json.load(f)


def write_unit(output_dir: str, key: str, records: Sequence[Mapping], summary: Mapping) -> None:
    """Writes a unit's predictions, then its summary: the summary's presence is what marks the unit as done."""
    if not writes():
        return
    pred_path = os.path.join(output_dir, "predictions", key + ".jsonl")
    with open(pred_path + ".tmp", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(pred_path + ".tmp", pred_path)
    write_json(os.path.join(output_dir, "tasks", key + ".json"), summary)
