"""Command line: generate from, or rank candidates with, one of our checkpoints.

    python -m optiml_jax.infer --checkpoint DIR --prompt "Translate to French: cheese" [--max_new_tokens 32]
    python -m optiml_jax.infer --checkpoint DIR --prompts_file prompts.txt --method beam --num_beams 4
    python -m optiml_jax.infer --checkpoint DIR --prompt "Is the sky blue? Answer:" --candidates yes no

``--prompts_file``: one prompt per line (``\\n`` inside a line stands for a newline), or a ``.jsonl`` file of
``{"prompt": ..., "candidates": [...]}`` objects. With candidates the output lists each candidate's
log-likelihood and the chosen one (rank classification); otherwise the generated continuation. ``--output F``
writes JSON lines instead of printing.

Sharding and multi-host runs are configured with gin flags exactly as in training (and evaluation):
``--gin.optiml_jax.PartitionConfig.mesh_shape="{'data': 2, 'fsdp': 2, 'model': 2}"`` selects the mesh,
``--gin.optiml_jax.DistributedConfig.*`` (or the JAX_* variables, OPTIML_DISTRIBUTED=auto) the processes,
``--gin.optiml_jax.serving.param_dtype="'float32'"`` the serving dtype (bfloat16 by default); ``--gin_file``
files may hold the same bindings. Parameters are restored straight into their shards; only process 0 prints
or writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import gin

from optiml_jax import decoding, gin_utils, partitioning
from optiml_jax import train as _train  # noqa: F401  (registers optiml_jax.PartitionConfig / DistributedConfig)

# What `serving` binds by default: the same configurables as train and eval, so the same flags select the mesh.
_SERVING_DEFAULTS = ("optiml_jax.serving.partition = @optiml_jax.PartitionConfig()",
                     "optiml_jax.serving.distributed = @optiml_jax.DistributedConfig()")


@dataclasses.dataclass(frozen=True)
class Serving:
    """Where and how a checkpoint is served: the mesh, its logical axis rules, the weights' dtype."""

    mesh: Any
    rules: partitioning.LogicalRules
    param_dtype: str | None


def serving(partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
            distributed: partitioning.DistributedConfig = partitioning.DistributedConfig(),
            param_dtype: str | None = "bfloat16") -> Serving:
    """Initialises the processes (``distributed``) and builds the mesh of ``partition`` (as `train` does).

    ``param_dtype``: dtype the weights are restored in ("bfloat16", "float32"; None = as stored).
    """
    partitioning.maybe_initialize_distributed(distributed)
    return Serving(partitioning.create_mesh(partition.mesh_shape),
                   partitioning.validate_rules(partition.logical_axis_rules), param_dtype)


# Registered unlocked: this module may first be imported after another CLI (e.g. eval) has parsed and locked gin.
with gin.unlock_config():
    serving = gin.configurable(serving, module="optiml_jax")


def serving_from_argv(argv: Sequence[str]) -> tuple[list[str], Serving]:
    """Parses the gin flags of ``argv`` (``--gin_file``, ``--gin.X=V``) into a `Serving`; returns the other
    arguments too. Raises `gin_utils.GinUsageError` / ValueError naming the flag at fault."""
    args = gin_utils.split_gin_args(argv)
    rest = args.rest + (["--help"] if args.help else [])
    if args.help:
        return rest, None  # type: ignore[return-value]  (argparse prints the help and exits)
    gin_utils.parse_gin(args.gin_files, [*_SERVING_DEFAULTS, *args.gin_bindings], args.search_paths)
    try:
        return rest, serving()
    finally:
        # infer and convert need gin only for these settings. A locked config would make every later import of a
        # module that declares configurables fail in the same process (a notebook converting, then evaluating).
        gin.clear_config()


def serving_from_cli(argv: Sequence[str] | None) -> tuple[list[str], Serving] | None:
    """`serving_from_argv` for a CLI's ``main``: ``sys.argv[1:]`` by default; a bad flag prints one ``error:``
    line and gives None (the caller exits 2)."""
    try:
        return serving_from_argv(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:  # GinUsageError, a bad mesh shape or axis rule
        print(f"error: {e}", file=sys.stderr)
        return None


def _read_prompts(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts_file {path}: no such file")
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--prompts_file {path}, line {n}: invalid JSON ({e})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                    raise ValueError(f"--prompts_file {path}, line {n}: expected an object with a string 'prompt'")
                cands = obj.get("candidates")
                if cands is not None and (not isinstance(cands, list) or not all(isinstance(c, str) for c in cands)
                                          or not cands):
                    raise ValueError(f"--prompts_file {path}, line {n}: 'candidates' must be a non-empty list of strings")
                items.append({"prompt": obj["prompt"], "candidates": cands})
            else:
                items.append({"prompt": line.rstrip("\n").replace("\\n", "\n"), "candidates": None})
    if not items:
        raise ValueError(f"--prompts_file {path}: no prompts in the file")
    return items


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m optiml_jax.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="our checkpoint dir (config.json + params/) or a run dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts_file", help="text file (one prompt per line) or .jsonl with prompt/candidates")
    p.add_argument("--candidates", nargs="+", help="answer options for every prompt: rank classification")
    p.add_argument("--normalize", action="store_true", help="rank by mean per-token log-likelihood")
    p.add_argument("--method", choices=["greedy", "sample", "beam"], default="greedy")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--length_penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16 (default: the serving "
                                                  "dtype, optiml_jax.serving.param_dtype)")
    p.add_argument("--output", default=None, help="write JSON lines here instead of printing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments or inputs)."""
    parsed = serving_from_cli(argv)
    if parsed is None:
        return 2
    rest, setup = parsed
    args = build_parser().parse_args(rest)
    try:
        items = _read_prompts(args.prompts_file) if args.prompts_file else [
            {"prompt": args.prompt, "candidates": None}]
        if args.candidates:
            for it in items:
                it["candidates"] = it["candidates"] or list(args.candidates)
        cfg = decoding.DecodeConfig(
            method=args.method, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams, length_penalty=args.length_penalty,
            seed=args.seed,
        )
        from optiml_jax.inference import Predictor

        predictor = Predictor.from_checkpoint(args.checkpoint, dtype=args.dtype, param_dtype=setup.param_dtype,
                                              mesh=setup.mesh, rules=setup.rules, batch_size=args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    results: list[dict | None] = [None] * len(items)
    ranked = [i for i, it in enumerate(items) if it["candidates"]]
    free = [i for i, it in enumerate(items) if not it["candidates"]]
    if ranked:
        scores = predictor.score([items[i]["prompt"] for i in ranked], [items[i]["candidates"] for i in ranked],
                                 normalize=args.normalize)
        for i, s in zip(ranked, scores):
            best = max(range(len(s)), key=s.__getitem__)
            results[i] = {"prompt": items[i]["prompt"], "candidates": items[i]["candidates"],
                          "scores": s, "prediction": items[i]["candidates"][best]}
    if free:
        outs = predictor.generate([items[i]["prompt"] for i in free], cfg)
        for i, o in zip(free, outs):
            results[i] = {"prompt": items[i]["prompt"], "prediction": o}
    if not partitioning.is_output_process():
        return 0  # every process computed the same results; process 0 reports them
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        print(f"wrote {len(results)} predictions to {args.output}")
    else:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    if predictor.truncated_prompts:
        print(f"note: {predictor.truncated_prompts} prompt(s) were cut from the left to fit the model's "
              f"{predictor.max_positions} positions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
