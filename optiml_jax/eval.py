"""Held-out evaluation CLI (gin, T5X conventions).

    python -m optiml_jax.eval --gin_file=gin/eval/tiny_cpu.gin [--gin.CHECKPOINT="'runs/tiny_cpu'"]
    python -m optiml_jax.eval --gin_file=gin/eval/optiml_validation.gin --gin.CHECKPOINT="'/ckpt/opt-iml-30b'"
    python -m optiml_jax.eval --gin_file=gin/eval/optiml_validation.gin --compare CKPT_A CKPT_B
    python -m optiml_jax.eval --gin_file=gin/eval/bbh.gin --gin.CHECKPOINT="'/ckpt/opt-iml-max-30b'"

Writes per-task predictions, results.json, report.md (paper layout) and figures under EVAL_OUTPUT_DIR, one
sub-directory per model; a killed run picks up where it stopped. ``--compare A B`` evaluates two checkpoints
and prints the per-level gains of A over B; ``run_eval.compare_untrained = True`` compares the checkpoint
with its own random initialisation (same config and seed). ``run_eval.protocol = 'bbh'`` evaluates BIG-Bench
Hard instead (3-shot, answer-only and chain-of-thought, exact match) and writes the per-task table
(report.md, summary.json, and per model bbh_report.md / bbh_results.json).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import gin

from optiml_jax import gin_utils, partitioning
from optiml_jax import train as _train  # noqa: F401  (registers optiml_jax.PartitionConfig / DistributedConfig)
from optiml_jax.models import configs as _configs  # noqa: F401  (registers model_config for the gin files)
from optiml_jax.tasks.schema import LEVELS

# Evaluation protocols of run_eval: the split's generalization levels, or BIG-Bench Hard (paper Table 14).
PROTOCOLS = ("heldout", "bbh")
# Fields that define the architecture: a checkpoint that differs in any of them is another model.
ARCHITECTURE_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
    "max_position_embeddings", "word_embed_proj_dim", "do_layer_norm_before",
)


def check_model_config(ckpt_dir: str, expected: Any) -> None:
    """Raises ValueError naming every architecture field where the checkpoint differs from ``expected``."""
    from optiml_jax.models.convert import load_config

    found = load_config(ckpt_dir)
    diffs = [
        f"{f}: checkpoint {getattr(found, f)!r} vs expected {getattr(expected, f)!r}"
        for f in ARCHITECTURE_FIELDS if getattr(found, f) != getattr(expected, f)
    ]
    if diffs:
        raise ValueError(
            f"checkpoint {ckpt_dir} is not the configured model ({getattr(expected, 'name', 'expected')}): "
            + "; ".join(diffs) + ". Point CHECKPOINT at a matching checkpoint or change the model gin file."
        )


@gin.configurable(module="optiml_jax.eval")
def run_eval(
    checkpoint: str = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    split: str = "validation",
    split_definition: str | None = None,
    shots: Sequence[int] = (0, 5),
    levels: Sequence[str] = LEVELS,
    tasks: Sequence[str] | None = None,
    max_tasks_per_level: int | None = None,
    max_examples: int | None = None,
    max_new_tokens: int = 256,
    length_normalize: bool = False,
    seed: int = 0,
    data_dir: str | None = None,
    compare_untrained: bool = False,
    compare_checkpoint: str | None = None,
    expected_model: Any = None,
    batch_size: int = 8,
    token_budget: int | None = 8192,
    dtype: str | None = None,
    param_dtype: str = "bfloat16",
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    distributed: partitioning.DistributedConfig = partitioning.DistributedConfig(),
    progress: bool = True,
    protocol: str = "heldout",
    bbh_modes: Sequence[str] = ("answer_only", "cot"),
    answer_only_max_new_tokens: int = 64,
) -> dict:
    """Evaluates ``checkpoint`` (a checkpoint or a training run dir) on a held-out split; returns a summary.

    Args:
      checkpoint: our checkpoint (config.json + params/) or a MODEL_DIR whose final/ export is used.
      output_dir: where predictions, results, report.md and figures go (one sub-directory per model).
      split / split_definition / shots / levels / tasks / max_tasks_per_level / max_examples / max_new_tokens /
        length_normalize / seed / data_dir: see `optiml_jax.evaluation.EvalConfig` (None max_examples = the
        paper's limits).
      compare_untrained: also evaluate the same architecture at its random initialisation (seed ``seed``).
      compare_checkpoint: also evaluate this checkpoint and report the gains of ``checkpoint`` over it.
      expected_model: an OPTConfig (e.g. ``@optiml_jax.models.configs.model_config()``); a checkpoint with a
        different architecture is refused.
      batch_size: prompts per device call at most; token_budget: padded prompt tokens per call at most
        (examples are sorted by length into batches; see `optiml_jax.inference.Predictor`).
      dtype: compute dtype override (default: param_dtype).
      param_dtype: serving dtype the weights are restored in, "bfloat16" (default) or "float32".
      partition: mesh shape and logical axis rules, exactly as in training
        (``--gin.optiml_jax.PartitionConfig.mesh_shape="{'data': 2, 'fsdp': 2, 'model': 2}"``); every parameter
        is restored straight into its shard.
      distributed: multi-host set-up (`optiml_jax.DistributedConfig`): every process runs the same evaluation
        over the global mesh and process 0 writes the files.
      progress: show a progress bar.
      protocol: "heldout" (the split's three generalization levels) or "bbh" (BIG-Bench Hard, Table 14: uses
        tasks, max_examples, max_new_tokens (chain of thought), answer_only_max_new_tokens, bbh_modes, seed,
        data_dir; split, shots, levels and the split definition do not apply).
      bbh_modes: BBH prompt modes, "answer_only" and/or "cot".
      answer_only_max_new_tokens: BBH generation limit without chain of thought.
    """
    # Multi-host set-up must precede any backend use.
    partitioning.maybe_initialize_distributed(distributed)
    from optiml_jax import evaluation, inference

    if protocol not in PROTOCOLS:
        raise ValueError(f"run_eval.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "bbh":
        cfg: Any = evaluation.BBHConfig(
            modes=tuple(bbh_modes), tasks=tuple(tasks) if tasks is not None else None, max_examples=max_examples,
            max_new_tokens=max_new_tokens, answer_only_max_new_tokens=answer_only_max_new_tokens, seed=seed,
            data_dir=data_dir)
    else:
        cfg = evaluation.EvalConfig(
            split=split, shots=tuple(int(k) for k in shots), levels=tuple(levels),
            tasks=tuple(tasks) if tasks is not None else None, max_tasks_per_level=max_tasks_per_level,
            max_examples=max_examples, max_new_tokens=max_new_tokens, length_normalize=length_normalize,
            seed=seed, data_dir=data_dir, split_definition=split_definition,
        )
    if not checkpoint:
        raise ValueError("no checkpoint to evaluate: bind CHECKPOINT (--gin.CHECKPOINT=\"'/path/to/ckpt'\")")
    ckpt = inference.resolve_checkpoint(checkpoint)
    if expected_model is not None:
        check_model_config(ckpt, expected_model)
    mesh = partitioning.create_mesh(partition.mesh_shape)
    serving = dict(dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                   rules=partitioning.validate_rules(partition.logical_axis_rules), batch_size=batch_size,
                   token_budget=token_budget)
    predictor = inference.Predictor.from_checkpoint(ckpt, name="trained", **serving)
    predictors, labels = [predictor], [_label(checkpoint, "trained")]
    predictor.name = labels[0]
    if compare_checkpoint is not None:
        other = inference.Predictor.from_checkpoint(
            inference.resolve_checkpoint(compare_checkpoint), **serving)
        other.name = _label(compare_checkpoint, "baseline")
        if other.name == predictor.name:
            other.name += " (B)"
        predictors.append(other)
        labels.append(other.name)
    if compare_untrained:
        untrained = predictor.untrained(seed)
        untrained.name = "untrained init"
        predictors.append(untrained)
        labels.append(untrained.name)

    if protocol == "bbh":
        out = evaluation.evaluate_bbh_models(predictors, labels, cfg, output_dir, progress=progress)
        if not partitioning.is_output_process():
            return {"labels": labels, **out}
        print(f"\nreport:  {out['report']}\nresults: {out['summary']}")
        with open(out["report"]) as f:
            print(f.read())
        return {"labels": labels, **out}
    out = evaluation.evaluate_models(predictors, labels, cfg, output_dir, progress=progress)
    if not partitioning.is_output_process():
        return {"labels": labels, **out}
    print(f"\nreport:  {out['report']}")
    for lab in labels:
        sub = os.path.join(output_dir, evaluation.safe_name(lab))
        print(f"{lab}: {os.path.join(sub, 'results.json')}, {os.path.join(sub, 'categories.png')}")
    if "figure" in out:
        print(f"figure:  {out['figure']}")
        print(evaluation.format_gains(out["gains"], labels[0], labels[1]))
    with open(out["report"]) as f:
        print(f.read())
    return {"labels": labels, **out}


def _label(path: str, fallback: str) -> str:
    base = os.path.basename(os.path.normpath(str(path)))
    return base if base and base not in (".", "final") else fallback


def _help() -> str:
    return gin_utils.help_text(
        "optiml_jax.eval", __doc__, [("optiml_jax.eval.run_eval", run_eval)],
        macros=[("CHECKPOINT", "checkpoint or training run dir to evaluate"),
                ("EVAL_OUTPUT_DIR", "where the reports go")],
    )


def _pop_compare(argv: list[str]) -> tuple[list[str], list[str]]:
    """Removes ``--compare A B`` (or ``--compare=A,B``) from argv; returns (rest, [A, B] or [])."""
    rest, pair = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--compare":
            pair = argv[i + 1: i + 3]
            if len(pair) != 2 or any(p.startswith("--") for p in pair):
                raise gin_utils.GinUsageError("--compare needs two checkpoint paths: --compare CKPT_A CKPT_B")
            i += 3
            continue
        if a.startswith("--compare="):
            pair = a.split("=", 1)[1].split(",")
            if len(pair) != 2:
                raise gin_utils.GinUsageError("--compare=A,B needs exactly two checkpoint paths")
        else:
            rest.append(a)
        i += 1
    return rest, pair


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for usage errors and bad inputs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, pair = _pop_compare(argv)
    except gin_utils.GinUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def _main(args: gin_utils.GinArgs) -> int:
        # The task layer registers its configurables (data_dir, the splits, mixture_config) on import; gin
        # refuses new configurables once the config is parsed and locked, so import it first.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from optiml_jax.tasks import catalogue, mixtures, splits  # noqa: F401

        bindings = list(args.gin_bindings)
        if pair:
            bindings += [("--compare", f"optiml_jax.eval.run_eval.checkpoint = {pair[0]!r}"),
                         ("--compare", f"optiml_jax.eval.run_eval.compare_checkpoint = {pair[1]!r}"),
                         ("--compare", "optiml_jax.eval.run_eval.compare_untrained = False")]
        gin_utils.parse_gin(args.gin_files, bindings, args.search_paths)
        try:
            run_eval()
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except RuntimeError as e:  # gin: a REQUIRED parameter (e.g. the checkpoint) was left unbound
            if "Required bindings" not in str(e):
                raise
            print(f"error: {e.args[0]} (bind it, e.g. --gin.CHECKPOINT=\"'/path/to/ckpt'\")", file=sys.stderr)
            return 2
        return 0

    return gin_utils.run_cli(_main, argv, help_fn=_help)


if __name__ == "__main__":
    sys.exit(main())
