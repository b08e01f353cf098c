"""Gin entry point for fine-tuning: ``python -m optiml_jax.train --gin_file=gin/train/tiny_cpu.gin``.

T5X conventions: the gin files set the macros ``MODEL_DIR``, ``TRAIN_STEPS``, ``BATCH_SIZE`` and
``INIT_CHECKPOINT`` and bind `train`'s parameters; ``--gin.NAME=VALUE`` overrides anything.

The run writes into ``MODEL_DIR``:

* ``metrics.jsonl``: one JSON line per step ``{"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mfu_basis",
  "examples": {benchmark: n}, "input_wait_s"}`` (``examples``: this process's rows of the step's batch, the whole
  batch on one process; ``input_wait_s``: how long the step waited for its batch), one per validation
  ``{"step", "heldout_loss"}`` and, at every checkpoint and at the end, ``{"step", "examples_seen"}`` (all
  processes, cumulative) (appended; a resumed run repeats the steps after its checkpoint, and the later line wins);
* ``tb/``: TensorBoard event files with the same scalars;
* ``checkpoints/<step>/``: training checkpoints (state + input position), resumed from automatically;
* ``final/``: the exported model (config.json + params/ + tokenizer/) that `optiml_jax.load_model` reads;
* ``config.gin``: the operative gin config, rewritten at the start and at every resume (an earlier, different one
  is kept as ``config.before-step<N>.gin``); the checkpoints record the same bindings;
* ``run.lock``: names the process writing the directory; a second run into a live directory is refused.

SIGTERM or SIGINT finishes the current step, saves a checkpoint there and exits with status 75; rerunning the same
command continues exactly where it stopped (docs/faults.md lists every fault and what the run does).

The device never waits for the host: batches are packed and put on the devices ``train.prefetch`` steps ahead
(`optiml_jax.input_feed`), and a step's metrics are read while the next step runs, so a non-finite loss stops the
run one step after the step that produced it (nothing is saved after that step: metrics are always read before
an evaluation or a checkpoint). Per-benchmark counts are summed over processes only at checkpoints and the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import gin

from optiml_jax import checkpoints as ckpt_lib
from optiml_jax import errors, flops, gin_utils, input_feed, partitioning, preemption, run_dir
from optiml_jax import inloop_eval as inloop_lib
from optiml_jax import trainer as trainer_lib
from optiml_jax.models import configs as model_configs  # registers the `model_config` configurable

logger = logging.getLogger("optiml_jax.train")

FINAL_DIR = "final"
CHECKPOINT_DIR = "checkpoints"


# Plain dataclasses, made bindable at this edge only.
for _cls in (trainer_lib.OptimizerConfig, ckpt_lib.CheckpointConfig, partitioning.PartitionConfig,
             partitioning.DistributedConfig, inloop_lib.InLoopEval):
    gin.external_configurable(_cls, module="optiml_jax")


@gin.configurable(module="optiml_jax")
def train(
    *,
    model_dir: str = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    seq_len: int = 2048,
    model: model_configs.OPTConfig = gin.REQUIRED,
    init_checkpoint: str | None = None,
    optimizer: trainer_lib.OptimizerConfig = trainer_lib.OptimizerConfig(),
    num_microbatches: int = 1,
    ce_chunk_tokens: int = trainer_lib.TrainerConfig.ce_chunk_tokens,
    seed: int = 0,
    mixture: str = "optiml_train",
    mixture_config: Any = None,
    packing_window: int = 16,
    prefetch: int = 2,
    data_dir: str | None = None,
    split: str | None = None,
    tokenizer_dir: str | None = None,
    cache_dir: str | None = None,
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    checkpoint: ckpt_lib.CheckpointConfig = ckpt_lib.CheckpointConfig(),
    distributed: partitioning.DistributedConfig = partitioning.DistributedConfig(),
    eval_every: int = 100,
    heldout_max_examples_per_task: int = 32,
    heldout_max_batches: int | None = 8,
    inloop_eval: inloop_lib.InLoopEval | None = None,
    peak_flops_per_device: float | None = None,
    export_final: bool = True,
    progress_bar: bool = True,
    start_over_if_damaged: bool = False,
) -> dict[str, Any]:
    """Fine-tunes an OPT model on the instruction mixture; resumes from MODEL_DIR's latest checkpoint.

    Args:
      model_dir: output folder (MODEL_DIR): metrics.jsonl, tb/, checkpoints/, final/.
      train_steps: optimizer steps (TRAIN_STEPS); the learning rate decays to 0 here.
      batch_size: global batch in packed sequences (BATCH_SIZE), split over the data-parallel devices.
      seq_len: packed sequence length.
      model: the OPTConfig (`@model_config()`), dropout included.
      init_checkpoint: our checkpoint folder (config.json + params/) to start from (INIT_CHECKPOINT);
        None trains from scratch.
      optimizer: `OptimizerConfig` (its total_steps is replaced by train_steps).
      num_microbatches: gradient accumulation steps inside one optimizer step.
      ce_chunk_tokens: logits rows of the tied LM head's cross-entropy formed at a time (`optiml_jax.losses`;
        0 = the full [tokens, vocab] logits at once). Memory against speed; results equal to f32 rounding.
      seed: data order, dropout and (from scratch) initialisation.
      mixture, mixture_config, split: the training mixture (see optiml_jax.tasks.pipeline.TrainInput).
      packing_window: look-ahead of the first-fit packer (1 = in-order packing); part of the resume state.
      prefetch: batches packed and put on the devices ahead of the step by a background thread (0: in the loop,
        as before the input feed); results do not depend on it.
      data_dir: the real data folder; None uses $OPTIML_DATA_DIR, else the embedded suite.
      tokenizer_dir: tokenizer folder; None uses INIT_CHECKPOINT's tokenizer/, else GPT-2's vocabulary.
      cache_dir: the token cache to read (`python -m optiml_jax.tasks cache`; refused when stale); None builds
        or refreshes one under $OPTIML_CACHE_DIR (default ~/.cache/optiml_jax/token_cache) by itself.
      partition: mesh shape and logical axis rules; checkpoint: save schedule; distributed: multi-host set-up.
      eval_every: held-out loss every this many steps (and at start and end); <= 0 only at start and end.
      heldout_max_examples_per_task, heldout_max_batches: size of the held-out loss set.
      inloop_eval: a small evaluation (rank classification and short generation, `optiml_jax.InLoopEval`) run
        on the training mesh every ``InLoopEval.every`` steps and after the last; its scores go to metrics.jsonl
        and TensorBoard (``eval/inloop/...``) beside the held-out loss. None: no in-loop evaluation.
      peak_flops_per_device: peak FLOP/s of one device for MFU; None takes a known GPU/TPU's spec
        (`optiml_jax.flops`), else measures a matmul at start-up ("mfu_basis" in metrics.jsonl says which).
      export_final: write MODEL_DIR/final/ at the end.
      progress_bar: show a tqdm bar with ETA on process 0.
      start_over_if_damaged: when every checkpoint in MODEL_DIR was found damaged (and moved aside), train from
        the beginning instead of refusing to.

    Returns:
      A summary: final step, last loss, first and last held-out loss, the export path; after SIGTERM/SIGINT,
      ``preempted`` = {"signal", "step"} and no export.
    """
    # Multi-host set-up must precede any backend use.
    partitioning.maybe_initialize_distributed(distributed)
    import jax

    from optiml_jax.models import convert

    _validate_args(model_dir, train_steps, batch_size, seq_len, model)
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise gin_utils.GinUsageError(f"train.prefetch must be an integer >= 0 (batches ahead), got {prefetch!r}")
    if not isinstance(ce_chunk_tokens, int) or isinstance(ce_chunk_tokens, bool) or ce_chunk_tokens < 0:
        raise gin_utils.GinUsageError(
            f"train.ce_chunk_tokens must be an integer >= 0 (0 = no chunking), got {ce_chunk_tokens!r}")
    model_dir_p = pathlib.Path(model_dir).expanduser().absolute()
    if init_checkpoint:
        ckpt_lib.check_model_checkpoint_dir(init_checkpoint)
        _check_init_config(convert.load_config(init_checkpoint), model, init_checkpoint)
    if data_dir is not None and not pathlib.Path(data_dir).expanduser().is_dir():
        raise gin_utils.GinUsageError(
            f"train.data_dir={data_dir!r}: no such directory. Point it at the task data (see "
            "the README's \"Real data\" section for the layout) or leave it None for the embedded suite.")
    env_dir = os.environ.get("OPTIML_DATA_DIR")
    if data_dir is None and env_dir and not pathlib.Path(env_dir).is_dir():
        raise gin_utils.GinUsageError(f"OPTIML_DATA_DIR={env_dir!r}: no such directory; fix or unset it")
    is_main = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        lock = run_dir.claim(model_dir_p, is_main)
        if lock is not None:
            stack.callback(lock.release)
        return _train(
            model_dir_p=model_dir_p, is_main=is_main, train_steps=train_steps, batch_size=batch_size,
            seq_len=seq_len, model=model, init_checkpoint=init_checkpoint, optimizer=optimizer,
            num_microbatches=num_microbatches, ce_chunk_tokens=ce_chunk_tokens, seed=seed, mixture=mixture,
            mixture_config=mixture_config,
            packing_window=packing_window, prefetch=prefetch, data_dir=data_dir, split=split,
            tokenizer_dir=tokenizer_dir, partition=partition, checkpoint=checkpoint, eval_every=eval_every,
            heldout_max_examples_per_task=heldout_max_examples_per_task, heldout_max_batches=heldout_max_batches,
            inloop_eval=inloop_eval,
            peak_flops_per_device=peak_flops_per_device, export_final=export_final, progress_bar=progress_bar,
            start_over_if_damaged=start_over_if_damaged, cache_dir=cache_dir)


def _train(*, model_dir_p: pathlib.Path, is_main: bool, train_steps: int, batch_size: int, seq_len: int,
           model: model_configs.OPTConfig, init_checkpoint: str | None, optimizer: trainer_lib.OptimizerConfig,
           num_microbatches: int, ce_chunk_tokens: int, seed: int, mixture: str, mixture_config: Any,
           packing_window: int,
           prefetch: int, data_dir: str | None, split: str | None, tokenizer_dir: str | None,
           partition: partitioning.PartitionConfig, checkpoint: ckpt_lib.CheckpointConfig, eval_every: int,
           heldout_max_examples_per_task: int, heldout_max_batches: int | None,
           inloop_eval: inloop_lib.InLoopEval | None,
           peak_flops_per_device: float | None, export_final: bool, progress_bar: bool,
           start_over_if_damaged: bool, cache_dir: str | None = None) -> dict[str, Any]:
    """The training run proper, once MODEL_DIR is this process's to write (see `train`)."""
    import jax

    from optiml_jax import tokenizer as tok_lib
    from optiml_jax.models import convert
    from optiml_jax.models.opt import OPTForCausalLM
    from optiml_jax.tasks import pipeline

    # Tokenizer: explicit folder > INIT_CHECKPOINT's > GPT-2 default.
    if tokenizer_dir:
        vocab = tok_lib.OPTVocabulary.from_dir(tokenizer_dir)
    elif init_checkpoint:
        vocab = tok_lib.OPTVocabulary.from_checkpoint(init_checkpoint)
    else:
        vocab = tok_lib.OPTVocabulary.default()
    if vocab.vocab_size > model.vocab_size:
        raise gin_utils.GinUsageError(
            f"the tokenizer has {vocab.vocab_size} ids but model_config.vocab_size is {model.vocab_size}")

    mesh = partitioning.create_mesh(partition.mesh_shape)
    logger.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
    dp = partitioning.data_parallel_size(mesh)
    if batch_size % dp:
        raise gin_utils.GinUsageError(
            f"BATCH_SIZE={batch_size} (train.batch_size) is not divisible by the data-parallel size {dp} (mesh "
            f"{dict(mesh.shape)} over {mesh.size} devices: data x fsdp = {dp}); use a multiple of {dp} or change "
            "PartitionConfig.mesh_shape")
    optimizer = dataclasses.replace(optimizer, total_steps=train_steps)
    trainer = trainer_lib.Trainer(
        OPTForCausalLM(model),
        trainer_lib.TrainerConfig(optimizer=optimizer, num_microbatches=num_microbatches, seed=seed,
                                  ce_chunk_tokens=ce_chunk_tokens),
        mesh, partition.logical_axis_rules, global_batch_size=batch_size, seq_len=seq_len)
    shard = partitioning.host_shard(mesh, batch_size)

    # The token cache (built here when missing: each process builds its share of the tasks, then all wait).
    from jax.experimental import multihost_utils

    from optiml_jax.tasks import loader

    data = loader.CachedTrainInput(
        mixture, vocab=vocab, batch_size=shard.local_batch_size, seq_len=seq_len, seed=seed,
        shard_index=shard.shard_index, num_shards=shard.num_shards, data_dir=data_dir, split=split,
        mixture_config=mixture_config, packing_window=packing_window, log_truncation=True, cache_dir=cache_dir,
        host_index=jax.process_index(), num_hosts=jax.process_count(),
        barrier=(lambda: multihost_utils.sync_global_devices("token_cache")) if jax.process_count() > 1 else None)
    heldout = _heldout_rows(pipeline, vocab, batch_size, seq_len, data_dir, split, heldout_max_examples_per_task,
                            heldout_max_batches, seed, shard)
    # Planned and rendered once, before the loop; evaluated with the live (sharded) training parameters.
    inloop = None
    if inloop_eval is not None and inloop_eval.every > 0:
        inloop = inloop_eval.build(OPTForCausalLM(model), vocab, mesh,
                                   partitioning.validate_rules(partition.logical_axis_rules))

    # The operative config is complete once the trainer and the input pipeline have called their configurables.
    run_record = {"model_config": model.to_dict(), "gin": gin_utils.bindings_of(gin.operative_config_str())}
    # Everything opened from here on is closed on every way out (an error, a preemption, the end): orbax's
    # background threads left running would otherwise print tracebacks after the one error line.
    with contextlib.ExitStack() as cleanup:
        checkpointer = ckpt_lib.Checkpointer(model_dir_p / CHECKPOINT_DIR, checkpoint)
        cleanup.callback(checkpointer.close)
        target = partitioning.with_shardings(trainer.abstract_state, trainer.state_shardings)
        try:
            restored = checkpointer.restore_latest(target, check_run=lambda stored: _check_resume(stored, model))
        except ckpt_lib.NoGoodCheckpoint as e:
            if not start_over_if_damaged:
                raise ckpt_lib.CheckpointError(f"{e}. {_START_OVER_HINT}") from None
            restored = None
        if restored is None and checkpointer.quarantined() and not start_over_if_damaged:
            raise ckpt_lib.CheckpointError(
                f"{checkpointer.directory} holds no good checkpoint, only steps moved aside as damaged "
                f"({', '.join(p.name for p in checkpointer.quarantined())}). {_START_OVER_HINT}")
        examples_seen: dict[str, int] = {}
        if restored is not None:
            state = restored.state
            meta = restored.input_state or {}
            data.restore(_this_process_input(meta, restored.step, checkpointer.directory))
            examples_seen = dict(meta.get("examples_seen", {}))
            for step, reason in restored.skipped:
                _print(is_main, f"WARNING: checkpoint {step} was damaged and moved aside ({reason})")
            changed = run_dir.changed_bindings((restored.run or {}).get("gin"), run_record["gin"])
            if changed:
                _print(is_main, f"WARNING: resuming step {restored.step} with {len(changed)} results-changing "
                                f"binding(s) that differ from the checkpoint's: {'; '.join(changed)}")
            _print(is_main, f"resumed from {checkpointer.directory}/{restored.step}")
        elif init_checkpoint:
            params = convert.load_exported_params(init_checkpoint, convert.load_config(init_checkpoint),
                                                  trainer.state_shardings.params)
            state = trainer.init_state(params)
            del params
            _print(is_main, f"initialised from INIT_CHECKPOINT={init_checkpoint}")
        else:
            state = trainer.init_state()
            _print(is_main, f"initialised {model.name or 'model'} ({model.num_params():,} parameters) from scratch")
        start_step = int(jax.device_get(state.step))
        if is_main:
            run_dir.write_config(model_dir_p, start_step, resumed=restored is not None)

        # A chip's spec peak on GPU/TPU, a same-run matmul on CPU (labelled "measured-matmul" in mfu_basis).
        peak = flops.resolve_peak(jax.devices(), dtype=model.dtype, per_device=peak_flops_per_device,
                                  measure=lambda: trainer_lib.measure_peak_flops(_jnp_dtype(model.dtype)))
        timer = trainer_lib.StepTimer(model.flops_per_token(seq_len), peak.flops_per_s)
        writer = run_dir.MetricsWriter(model_dir_p, enabled=is_main)
        cleanup.callback(writer.close)
        summary: dict[str, Any] = {"start_step": start_step}
        stop = preemption.Preemption().install()
        cleanup.callback(stop.uninstall)
        # Batches are packed and put on the devices `prefetch` steps ahead; each carries the input position after
        # it, which is what a checkpoint after its step stores (prefetched, unconsumed batches are produced again).
        feed = input_feed.InputFeed(data, put=trainer.global_batch, depth=prefetch, snapshot=lambda host: (
            trainer_lib.examples_per_benchmark(host, data.task_names, data.task_benchmark),
            data.truncation_counts()))   # this host's, cumulative (see TrainInput)
        cleanup.callback(feed.close)
        if heldout:
            summary["first_heldout_loss"] = _log_heldout(trainer, state, heldout, start_step, writer, is_main)
        bar = _progress(train_steps, start_step, enabled=is_main and progress_bar)
        if bar is not None:
            cleanup.callback(bar.close)
        tokens_per_step = batch_size * seq_len
        benchmarks = sorted(set(data.task_benchmark.values()))
        unsynced: dict[str, int] = {}   # this process's examples per benchmark since the last sum over processes
        pending: list[tuple[int, input_feed.FedBatch, Any]] = []   # the step dispatched but not read yet
        last: dict[str, Any] = {"loss": float("nan"), "synced": None}

        def settle() -> None:
            """Reads the pending step's metrics (waiting for that step only), checks its loss, logs its line."""
            if not pending:
                return
            done_step, fed, metrics = pending.pop()
            m = jax.device_get(metrics)
            loss = float(m["loss"])
            if not math.isfinite(loss):
                raise trainer_lib.NonFiniteLossError(done_step, loss, trainer_lib.batch_task_names(
                    fed.host, data.task_names))
            t = timer.lap(tokens_per_step)
            if done_step == start_step + 1:  # the first step includes compilation
                t["tokens_per_s"], t["mfu"] = float("nan"), float("nan")
            counts, truncation = fed.snapshot
            for k, v in counts.items():
                unsynced[k] = unsynced.get(k, 0) + v
            last["loss"] = loss
            writer.write({"step": done_step, "loss": loss, "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                          "tokens_per_s": t["tokens_per_s"], "mfu": t["mfu"], "mfu_basis": peak.basis,
                          "target_tokens": float(m["target_tokens"]), "examples": counts, "truncation": truncation,
                          "input_wait_s": fed.wait_s})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        def sync_examples(step: int) -> None:
            # A collective on several processes: called at steps every process agrees on (saves, the end).
            if last["synced"] == step:
                return
            for k, v in _sum_over_processes(unsynced, benchmarks).items():
                examples_seen[k] = examples_seen.get(k, 0) + v
            unsynced.clear()
            last["synced"] = step
            writer.write({"step": step, "examples_seen": dict(sorted(examples_seen.items()))})

        timer.start()
        for step in range(start_step, train_steps):
            fed = next(feed)
            state, metrics = trainer.train_step_global(state, fed.device)
            settle()  # the previous step's metrics, read while this one runs
            done = step + 1
            pending.append((done, fed, metrics))
            due_heldout = bool(heldout) and eval_every > 0 and done % eval_every == 0 and done != train_steps
            due_inloop = inloop is not None and inloop_eval.due(done, train_steps) and done != train_steps
            preempted = stop.should_stop(done)
            due_save = checkpointer.should_save(done, train_steps) or preempted
            if not (due_heldout or due_inloop or due_save):
                continue
            settle()  # a step is checked before anything is evaluated or saved after it
            if due_heldout:
                _log_heldout(trainer, state, heldout, done, writer, is_main)
            if due_inloop:
                writer.write(inloop(state.params, done))
            if due_save:
                sync_examples(done)
                checkpointer.save(done, state, {"inputs": _all_input_states(fed.input_state),
                                                "examples_seen": examples_seen}, run=run_record)
            if preempted:
                checkpointer.wait()
                summary.update(final_step=done, last_loss=last["loss"], examples_seen=examples_seen,
                               preempted={"signal": stop.signal_name, "step": done})
                _print(is_main, f"{stop.signal_name}: stopped after step {done}; checkpoint saved to "
                                f"{checkpointer.directory}/{done}. Rerun the same command to continue.")
                return summary
            timer.start()  # throughput counts training only, not evaluation or checkpoint writes
        settle()
        feed.close()
        if bar is not None:
            bar.close()
        stop.uninstall()  # past the last step a signal needs no checkpoint: the default behaviour comes back
        checkpointer.wait()
        final_step = int(jax.device_get(state.step))
        sync_examples(final_step)
        summary.update(final_step=final_step, last_loss=last["loss"], examples_seen=examples_seen)
        if heldout:
            summary["last_heldout_loss"] = _log_heldout(trainer, state, heldout, final_step, writer, is_main)
        if inloop is not None:
            summary["last_inloop_eval"] = inloop(state.params, final_step)
            writer.write(summary["last_inloop_eval"])
        if export_final:
            out = _export(model_dir_p / FINAL_DIR, state.params, model, vocab, convert)
            summary["exported"] = str(out)
            _print(is_main, f"final model written to {out} (load with optiml_jax.load_model({str(out)!r}))")
    return summary


# ---- helpers ----------------------------------------------------------------------------------------------

_START_OVER_HINT = ("Nothing was deleted and training did not start over (that would overwrite final/). Inspect "
                    "the damaged steps; to train from the beginning anyway, rerun with "
                    "--gin.optiml_jax.train.start_over_if_damaged=True")


def _check_resume(stored_run: Mapping[str, Any] | None, model: model_configs.OPTConfig) -> None:
    """Raises when the checkpoint's recorded model config is another architecture than this run's."""
    if not stored_run or "model_config" not in stored_run:
        return  # written before runs recorded themselves: the state-tree comparison still applies
    stored = dict(stored_run["model_config"])
    fields = model_configs.ARCHITECTURE_FIELDS + ("param_dtype",)
    diff = [f"{f}: checkpoint {stored.get(f)!r} vs this run {getattr(model, f)!r}" for f in fields
            if stored.get(f) != getattr(model, f)]
    if diff:
        raise gin_utils.GinUsageError(
            f"MODEL_DIR holds checkpoints of another model config ({'; '.join(diff)}). Resume with the model config "
            "that wrote them (see MODEL_DIR/config.gin), or choose another MODEL_DIR")


def _validate_args(model_dir, train_steps, batch_size, seq_len, model) -> None:
    if not model_dir or not isinstance(model_dir, (str, os.PathLike)):
        raise gin_utils.GinUsageError(f"MODEL_DIR (train.model_dir) must be a folder path, got {model_dir!r}; "
                                      "e.g. --gin.MODEL_DIR=\"'runs/my_run'\"")
    for name, macro, value in (("train_steps", "TRAIN_STEPS", train_steps), ("batch_size", "BATCH_SIZE", batch_size),
                               ("seq_len", "train.seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise gin_utils.GinUsageError(f"{macro} (train.{name}) must be a positive integer, got {value!r}")
    if not isinstance(model, model_configs.OPTConfig):
        raise gin_utils.GinUsageError(f"train.model must be an OPTConfig (e.g. @model_config()), got {model!r}")
    if seq_len < 2:
        raise gin_utils.GinUsageError(f"train.seq_len={seq_len}: a packed row needs at least 2 tokens (an input and "
                                      "its target); use e.g. --gin.optiml_jax.train.seq_len=128")
    for field in ("dtype", "param_dtype"):
        if getattr(model, field) == "float16":
            raise gin_utils.GinUsageError(
                f"model_config.{field}='float16': training in float16 needs loss scaling, which optiml_jax.train does "
                "not do, so small gradients would underflow to 0 silently. Train in 'bfloat16' (same memory, the "
                "float32 exponent range) or 'float32'; float16 is fine for evaluation and inference")
    if seq_len > model.max_position_embeddings:
        raise gin_utils.GinUsageError(
            f"train.seq_len={seq_len} exceeds the model's max_position_embeddings={model.max_position_embeddings}")
    if model.attention_kernel in model_configs.UNPACKED_ONLY_ATTENTION_KERNELS:
        raise gin_utils.GinUsageError(
            f"model_config.attention_kernel={model.attention_kernel!r} cannot express packed rows (several examples "
            "in one row), and training batches are packed; use 'pallas' (GPU), 'splash' (TPU) or 'xla'")


def _check_init_config(stored: model_configs.OPTConfig, wanted: model_configs.OPTConfig, path: str) -> None:
    # Shapes and architecture must agree; dtype, dropout, remat and kernels may differ on purpose.
    diff = [f"{f}: checkpoint {a!r} vs model_config {b!r}" for f, a, b in stored.architecture_diff(wanted)]
    if diff:
        raise gin_utils.GinUsageError(
            f"INIT_CHECKPOINT={path!r} does not match the run's model config ({'; '.join(diff)}); bind "
            "model_config.name to the checkpoint's size")


def _jnp_dtype(name: str):
    import jax.numpy as jnp

    return jnp.dtype(name)


def _print(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, flush=True)


def _heldout_rows(pipeline, vocab, batch_size, seq_len, data_dir, split, max_examples, max_batches, seed, shard):
    # Every process builds the same global batches and keeps its own rows, so all processes run the same
    # number of eval steps.
    if max_batches is not None and max_batches <= 0:
        return []
    batches = pipeline.heldout_loss_batches(
        vocab=vocab, batch_size=batch_size, seq_len=seq_len, split="validation", data_dir=data_dir,
        max_examples_per_task=max_examples, seed=seed, split_definition=split)
    if max_batches is not None:
        batches = batches[:max_batches]
    lo = shard.shard_index * shard.local_batch_size
    return [{k: v[lo:lo + shard.local_batch_size] for k, v in b.items()} for b in batches]


def _log_heldout(trainer, state, heldout, step, writer, is_main) -> float:
    loss = trainer.eval_loss(state.params, heldout)
    writer.write({"step": step, "heldout_loss": loss})
    _print(is_main, f"step {step}: held-out loss {loss:.4f}")
    return loss


def _all_input_states(state: dict) -> list[dict]:
    """Every process's input position (``state``: this one's), in process order (each host reads its own shard).

    The checkpoint's JSON item is written by process 0 alone, so the other processes' positions travel to it
    with JAX's own allgather (as JSON bytes, padded to the longest).
    """
    import jax

    if jax.process_count() == 1:
        return [state]
    import numpy as np
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(state).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(rows[i, :n])) for i, n in enumerate(lengths.tolist())]


def _this_process_input(meta: Mapping[str, Any], step: int, directory: pathlib.Path) -> dict:
    """This process's input position from a checkpoint's meta (``inputs``: one per process)."""
    import jax

    inputs = meta.get("inputs") or ([meta["input"]] if meta.get("input") else None)  # "input": single-host, older
    if not inputs:
        raise ckpt_lib.CheckpointError(
            f"checkpoint {step} in {directory} holds no input pipeline position; it was not written by "
            "optiml_jax.train -- use another MODEL_DIR")
    if len(inputs) != jax.process_count():
        raise ckpt_lib.CheckpointError(
            f"checkpoint {step} in {directory} was written by {len(inputs)} process(es) and this run has "
            f"{jax.process_count()}: the input stream is sharded per process, so resume with {len(inputs)} "
            "process(es) (the device mesh may change)")
    return inputs[jax.process_index()]


def _sum_over_processes(counts: Mapping[str, int], benchmarks: list[str]) -> dict[str, int]:
    import jax

    if jax.process_count() == 1:
        return dict(counts)
    import numpy as np
    from jax.experimental import multihost_utils

    # Every process has the same task list, so a vector over the sorted benchmark names lines up.
    vec = np.asarray([counts.get(n, 0) for n in benchmarks], np.int64)
    total = np.asarray(multihost_utils.process_allgather(vec)).reshape(jax.process_count(), -1).sum(0)
    return {n: int(v) for n, v in zip(benchmarks, total) if v}


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)


def _export(out: pathlib.Path, params, config, vocab, convert) -> pathlib.Path:
    import jax

    tokenizer_dir = getattr(vocab, "tokenizer_dir", None)
    if jax.process_count() == 1:
        return convert.save_checkpoint(out, params, config, tokenizer_dir=tokenizer_dir, overwrite=True)
    # Multi-process: every process writes its shards of the same orbax tree; process 0 writes the rest.
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    if jax.process_index() == 0 and out.exists():
        shutil.rmtree(out)
    multihost_utils.sync_global_devices("export_clean")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out.absolute() / convert.PARAMS_DIR, params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (out / convert.CONFIG_FILE).write_text(config.to_json())
        if tokenizer_dir is not None:
            convert.copy_tokenizer(pathlib.Path(tokenizer_dir), out / convert.TOKENIZER_DIR)
    multihost_utils.sync_global_devices("export_done")
    return out


MACROS = (
    ("MODEL_DIR", "output folder: metrics.jsonl, tb/, checkpoints/, final/ (resumes if it holds checkpoints)"),
    ("TRAIN_STEPS", "number of optimizer steps; the learning rate decays linearly to 0 there"),
    ("BATCH_SIZE", "global batch size in packed sequences"),
    ("INIT_CHECKPOINT", "our checkpoint folder to fine-tune from (None: from scratch)"),
)


def _help() -> str:
    return gin_utils.help_text(
        "optiml_jax.train", __doc__.split("\n\n")[1] if __doc__ else "",
        [("train", train), ("OptimizerConfig", trainer_lib.OptimizerConfig),
         ("PartitionConfig", partitioning.PartitionConfig), ("CheckpointConfig", ckpt_lib.CheckpointConfig),
         ("DistributedConfig", partitioning.DistributedConfig),
         ("model_config", model_configs.model_config)],
        MACROS)


def _main(args: gin_utils.GinArgs) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the task layer imports TensorFlow (via seqio)
    # Registers the task layer's gin configurables before gin locks (it refuses new ones afterwards).
    from optiml_jax import tasks

    tasks.import_configurables()

    gin_utils.parse_gin(args.gin_files, args.gin_bindings, args.search_paths)
    # UserErrors (usage, data, checkpoint, run-directory problems) become one line in gin_utils.run_cli.
    try:
        summary = train()
    except trainer_lib.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_NON_FINITE
    except FileNotFoundError as e:
        raise gin_utils.GinUsageError(
            f"{e} (unset OPTIML_DATA_DIR to train on the embedded suite, or point it at a data folder laid out as "
            "described in README.md, 'Real data')") from e
    print(json.dumps({k: v for k, v in summary.items() if k != "examples_seen"}), flush=True)
    return errors.EXIT_PREEMPTED if summary.get("preempted") else errors.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring); returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return gin_utils.run_cli(_main, argv, help_fn=_help)


if __name__ == "__main__":
    sys.exit(main())
