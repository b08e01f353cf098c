"""Held-out evaluation CLI (gin, T5X conventions).

    python -m optiml_jax.eval --gin_file=gin/eval/tiny_cpu.gin [--gin.CHECKPOINT="'runs/tiny_cpu'"]
    python -m optiml_jax.eval --gin_file=gin/eval/optiml_validation.gin --gin.CHECKPOINT="'/ckpt/opt-iml-30b'"
    python -m optiml_jax.eval --gin_file=gin/eval/optiml_validation.gin --compare CKPT_A CKPT_B
    python -m optiml_jax.eval --gin_file=gin/eval/bbh.gin --gin.CHECKPOINT="'/ckpt/opt-iml-max-30b'"
    python -m optiml_jax.eval --plan --gin_file=models/opt_30b.gin \
        --gin.optiml_jax.PartitionConfig.mesh_shape="{'data': 1, 'fsdp': 1, 'model': 8}"

Prints the evaluation plan (units, examples, tokens, estimated time) first, then writes per-task predictions,
results.json (every cell with its counts found on disk, "null" for n/a, and 95% bootstrap intervals), report.md
(paper layout) and figures under EVAL_OUTPUT_DIR, one sub-directory per model, plus a top-level results.json /
report.md; a killed run picks up where it stopped. ``--compare A B`` evaluates two checkpoints and prints the
per-level gains of A over B with their paired bootstrap intervals; ``run_eval.compare_untrained = True`` compares the checkpoint
with its own random initialisation (same config and seed). ``run_eval.protocol = 'bbh'`` evaluates BIG-Bench
Hard instead (3-shot, answer-only and chain-of-thought, exact match) and writes the per-task table
(report.md, summary.json, and per model bbh_report.md / bbh_results.json).

``--plan`` allocates nothing: it compiles the evaluation programs (rank classification over the prompt cache,
greedy decoding) -- and the training step -- for a model gin file, a serving dtype and a mesh against abstract
inputs, and prints each one's per-device memory from XLA's compiled memory analysis (`plan_memory`). Without
enough devices on a CPU host it compiles for fake CPU devices, so a laptop can tell which mesh fits a 30B or
175B model on 8 x 80 GB.
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
    generation_limit: str = "fixed",
    length_normalize: bool = False,
    scoring: str = "optiml",
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
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
) -> dict:
    """Evaluates ``checkpoint`` (a checkpoint or a training run dir) on a held-out split; returns a summary.

    Args:
      checkpoint: our checkpoint (config.json + params/) or a MODEL_DIR whose final/ export is used.
      output_dir: where predictions, results, report.md and figures go (one sub-directory per model).
      split / split_definition / shots / levels / tasks / max_tasks_per_level / max_examples / max_new_tokens /
        generation_limit / length_normalize / scoring / seed / data_dir: see `optiml_jax.evaluation.EvalConfig`
        (None max_examples = the paper's limits; generation_limit "fixed" (every generation up to
        max_new_tokens) or "references" (each task up to its longest reference's bound,
        `optiml_jax.evaluation.planning`); scoring "optiml" or "lm_eval").
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
      bootstrap_samples / bootstrap_seed: the 95% bootstrap intervals of every average and of the gains
        (`optiml_jax.bootstrap`); 0 samples = no intervals.
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
            max_examples=max_examples, max_new_tokens=max_new_tokens, generation_limit=generation_limit,
            length_normalize=length_normalize, seed=seed, data_dir=data_dir, split_definition=split_definition,
            scoring=scoring,
            bootstrap=evaluation.Bootstrap(num_samples=bootstrap_samples, seed=bootstrap_seed)
            if bootstrap_samples else None,
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

    # One runner for both protocols: the config decides (`evaluation.protocol_for`).
    out = evaluation.evaluate_models(predictors, labels, cfg, output_dir, progress=progress)
    if not partitioning.is_output_process():
        return {"labels": labels, **out}
    if protocol == "bbh":
        print(f"\nreport:  {out['report']}\nresults: {out['summary']}")
    else:
        print(f"\nreport:  {out['report']}\nresults: {out['results_json']}")
        for lab in labels:
            sub = os.path.join(output_dir, evaluation.safe_name(lab))
            print(f"{lab}: {os.path.join(sub, 'results.json')}, {os.path.join(sub, 'categories.png')}")
        if "figure" in out:
            print(f"figure:  {out['figure']}")
            print(evaluation.format_gains(out["gains"], labels[0], labels[1], intervals=out.get("gain_intervals")))
    with open(out["report"]) as f:
        print(f.read())
    return {"labels": labels, **out}


@gin.configurable(module="optiml_jax.eval")
def plan_memory(
    model: Any = gin.REQUIRED,
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    num_devices: int | None = None,
    param_dtype: str = "bfloat16",
    batch_size: int = 8,
    prompt_len: int = 1024,
    candidates_per_prompt: int = 4,
    candidate_len: int = 8,
    max_new_tokens: int = 256,
    train_batch_size: int | None = None,
    train_seq_len: int = 2048,
) -> list[dict]:
    """Per-device memory of the evaluation (and optionally training) step of ``model`` on ``partition``'s mesh,
    from XLA's compiled memory analysis against abstract inputs (no parameter is allocated).

    Args:
      model: an OPTConfig (``@optiml_jax.models.configs.model_config()``, e.g. from gin/models/opt_30b.gin).
      partition: the mesh (sizes must multiply to ``num_devices``; -1 fills).
      num_devices: devices to plan for; None = the mesh's size when fully given, else the devices present. On a
        CPU host with fewer devices, that many fake CPU devices are created (before JAX starts).
      param_dtype: serving dtype of the weights (and compute).
      batch_size, prompt_len, candidates_per_prompt, candidate_len: the rank-classification call
        (``batch_size`` prompts, each with its candidates scored in one pass over the prompt cache).
      max_new_tokens: the greedy-decoding call (``batch_size`` prompts of ``prompt_len``).
      train_batch_size, train_seq_len: also plan the training step (f32 master weights and Adam state, as
        `train` keeps them) for this global batch; None = evaluation only.

    Returns one row per program: name, argument/output/temporary/total bytes per device.
    """
    import math

    import jax

    sizes = [int(partition.mesh_shape.get(a, 1)) for a in partitioning.MESH_AXES]
    wanted = num_devices or (math.prod(sizes) if -1 not in sizes else None)
    if wanted is not None:
        try:  # fake CPU devices (used only when JAX runs on CPU) must be requested before the backend starts
            jax.config.update("jax_num_cpu_devices", max(wanted, int(jax.config.jax_num_cpu_devices)))
        except RuntimeError:  # already started (e.g. XLA_FLAGS set the count): use the devices it has
            pass
    devices = jax.devices()[:wanted] if wanted is not None else jax.devices()
    if wanted is not None and len(devices) < wanted:
        raise ValueError(f"plan_memory: the mesh needs {wanted} devices but only {len(devices)} are available "
                         "(JAX started before the plan could create fake CPU devices)")
    from optiml_jax import decoding, inference
    from optiml_jax.models.opt import OPTForCausalLM

    mesh = partitioning.create_mesh(partition.mesh_shape, devices)
    rules = partitioning.validate_rules(partition.logical_axis_rules)
    cfg = model.replace(dtype=param_dtype, param_dtype=param_dtype, dropout=0.0, attention_dropout=0.0)
    net = OPTForCausalLM(cfg)
    abstract, shardings = partitioning.abstract_params_and_shardings(net.abstract_params, mesh, rules)
    params = partitioning.with_shardings(abstract, shardings)
    rows = inference.padded_rows(batch_size, mesh)

    def batch(*shape: int, dtype=jax.numpy.int32) -> jax.ShapeDtypeStruct:
        spec = partitioning.batch_sharding(mesh, len(shape)) if shape[0] % partitioning.data_parallel_size(mesh) \
            == 0 else partitioning.replicated(mesh)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=spec)

    out = []

    def record(name: str, compiled: Any) -> None:
        m = compiled.memory_analysis()
        row = {"program": name, "argument_bytes": int(m.argument_size_in_bytes),
               "output_bytes": int(m.output_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
               "alias_bytes": int(getattr(m, "alias_size_in_bytes", 0))}
        row["total_bytes"] = row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"] - row["alias_bytes"]
        out.append(row)

    cand_rows = inference.padded_rows(batch_size * candidates_per_prompt, mesh)
    decoding.cache_structure(net, rows, prompt_len + candidate_len - 1)
    score = inference._compiled_scorer(net, "cache")
    record(f"rank classification ({rows} prompts x {prompt_len}, {cand_rows} candidates x {candidate_len})",
           score.lower(params, batch(rows, prompt_len), batch(rows, prompt_len), batch(rows, prompt_len),
                       batch(cand_rows), batch(cand_rows, candidate_len),
                       batch(cand_rows, candidate_len, dtype=jax.numpy.float32)).compile())
    dcfg = decoding.DecodeConfig(method="greedy", max_new_tokens=max_new_tokens)
    decoding.cache_structure(net, rows, prompt_len + max_new_tokens)
    gen = decoding._compiled(net, dcfg, cfg.eos_token_id, cfg.pad_token_id)
    key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=partitioning.replicated(mesh))
    record(f"greedy decoding ({rows} prompts x {prompt_len} + {max_new_tokens} new)",
           gen.lower(params, batch(rows, prompt_len), batch(rows, prompt_len), batch(rows, prompt_len), key,
                     batch(rows)).compile())
    if train_batch_size:
        import numpy as np

        from optiml_jax import trainer as trainer_lib

        train_cfg = model.replace(param_dtype="float32", dtype=param_dtype, remat=True)
        t = trainer_lib.Trainer(OPTForCausalLM(train_cfg), trainer_lib.TrainerConfig(), mesh, rules,
                                global_batch_size=train_batch_size, seq_len=train_seq_len)
        local = partitioning.host_shard(mesh, train_batch_size).local_batch_size
        ones = np.ones((local, train_seq_len), np.int32)
        record(f"training step ({train_batch_size} x {train_seq_len}, f32 master weights + Adam, remat)",
               t.compile_train_step({"decoder_input_tokens": ones, "decoder_target_tokens": ones,
                                     "decoder_loss_weights": ones.astype(np.float32), "decoder_segment_ids": ones,
                                     "decoder_positions": np.broadcast_to(np.arange(train_seq_len, dtype=np.int32),
                                                                          ones.shape).copy()}))
    shape = dict(zip(partitioning.MESH_AXES, mesh.devices.shape))
    print(f"memory plan: {cfg.name} ({cfg.num_params() / 1e9:.2f}B parameters), {param_dtype}, mesh {shape} "
          f"on {mesh.devices.size} x {devices[0].platform} devices (XLA compiled memory analysis, per device)")
    print("| program | arguments (GiB) | outputs (GiB) | temporaries (GiB) | total (GiB) |")
    print("|---|---:|---:|---:|---:|")
    for r in out:
        print(f"| {r['program']} | {r['argument_bytes'] / 2**30:.2f} | {r['output_bytes'] / 2**30:.2f} | "
              f"{r['temp_bytes'] / 2**30:.2f} | {r['total_bytes'] / 2**30:.2f} |")
    return out


def _label(path: str, fallback: str) -> str:
    base = os.path.basename(os.path.normpath(str(path)))
    return base if base and base not in (".", "final") else fallback


def _help() -> str:
    return gin_utils.help_text(
        "optiml_jax.eval", __doc__, [("optiml_jax.eval.run_eval", run_eval),
                                     ("optiml_jax.eval.plan_memory (with --plan)", plan_memory)],
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
    plan = "--plan" in argv
    argv = [a for a in argv if a != "--plan"]
    try:
        argv, pair = _pop_compare(argv)
    except gin_utils.GinUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def _main(args: gin_utils.GinArgs) -> int:
        # The task layer registers its configurables (data_dir, the splits, mixture_config) on import; gin
        # refuses new configurables once the config is parsed and locked, so import it first.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from optiml_jax import tasks

        tasks.import_configurables()

        bindings = list(args.gin_bindings)
        if pair:
            bindings += [("--compare", f"optiml_jax.eval.run_eval.checkpoint = {pair[0]!r}"),
                         ("--compare", f"optiml_jax.eval.run_eval.compare_checkpoint = {pair[1]!r}"),
                         ("--compare", "optiml_jax.eval.run_eval.compare_untrained = False")]
        if plan:
            bindings = [("--plan", "optiml_jax.eval.plan_memory.model = @optiml_jax.models.configs.model_config()"),
                        ("--plan", "optiml_jax.eval.plan_memory.partition = @optiml_jax.PartitionConfig()"),
                        *bindings]
        gin_utils.parse_gin(args.gin_files, bindings, args.search_paths)
        try:
            plan_memory() if plan else run_eval()
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
