"""Gin entry point for fine-tuning: ``python -m optiml_jax.train --gin_file=gin/train/tiny_cpu.gin``.

T5X conventions: the gin files set the macros ``MODEL_DIR``, ``TRAIN_STEPS``, ``BATCH_SIZE`` and
``INIT_CHECKPOINT`` and bind `train`'s parameters; ``--gin.NAME=VALUE`` overrides anything.

The run writes into ``MODEL_DIR``:

* ``metrics.jsonl``: one JSON line per step ``{"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu",
  "examples": {benchmark: n}}`` and one per validation ``{"step", "heldout_loss"}`` (appended; a resumed run
  repeats the steps after its checkpoint, and the later line wins);
* ``tb/``: TensorBoard event files with the same scalars;
* ``checkpoints/<step>/``: training checkpoints (state + input position), resumed from automatically;
* ``final/``: the exported model (config.json + params/ + tokenizer/) that `optiml_jax.load_model` reads.
"""
from __future__ import annotations

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
from optiml_jax import gin_utils
from optiml_jax import partitioning
from optiml_jax import trainer as trainer_lib
from optiml_jax.models import configs as model_configs  # registers the `model_config` configurable

logger = logging.getLogger("optiml_jax.train")

FINAL_DIR = "final"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"

# Plain dataclasses, made bindable at this edge only.
for _cls in (trainer_lib.OptimizerConfig, ckpt_lib.CheckpointConfig, partitioning.PartitionConfig,
             partitioning.DistributedConfig):
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
    seed: int = 0,
    mixture: str = "optiml_train",
    mixture_config: Any = None,
    packing_window: int = 16,
    data_dir: str | None = None,
    split: str | None = None,
    tokenizer_dir: str | None = None,
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    checkpoint: ckpt_lib.CheckpointConfig = ckpt_lib.CheckpointConfig(),
    distributed: partitioning.DistributedConfig = partitioning.DistributedConfig(),
    eval_every: int = 100,
    heldout_max_examples_per_task: int = 32,
    heldout_max_batches: int | None = 8,
    peak_flops_per_device: float | None = None,
    export_final: bool = True,
    progress_bar: bool = True,
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
      seed: data order, dropout and (from scratch) initialisation.
      mixture, mixture_config, split: the training mixture (see optiml_jax.tasks.pipeline.TrainInput).
      packing_window: look-ahead of the first-fit packer (1 = in-order packing); part of the resume state.
      data_dir: the real data folder; None uses $OPTIML_DATA_DIR, else the embedded suite.
      tokenizer_dir: tokenizer folder; None uses INIT_CHECKPOINT's tokenizer/, else GPT-2's vocabulary.
      partition: mesh shape and logical axis rules; checkpoint: save schedule; distributed: multi-host set-up.
      eval_every: held-out loss every this many steps (and at start and end); <= 0 only at start and end.
      heldout_max_examples_per_task, heldout_max_batches: size of the held-out loss set.
      peak_flops_per_device: peak FLOP/s of one device for MFU; None measures a matmul at start-up.
      export_final: write MODEL_DIR/final/ at the end.
      progress_bar: show a tqdm bar with ETA on process 0.

    Returns:
      A summary: final step, last loss, first and last held-out loss, the export path.
    """
    # Multi-host set-up must precede any backend use.
    partitioning.maybe_initialize_distributed(distributed)
    import jax
    import numpy as np

    from optiml_jax import tokenizer as tok_lib
    from optiml_jax.models import convert
    from optiml_jax.models.opt import OPTForCausalLM
    from optiml_jax.tasks import pipeline

    _validate_args(model_dir, train_steps, batch_size, seq_len, model)
    model_dir_p = pathlib.Path(model_dir).expanduser().absolute()
    if init_checkpoint:
        ckpt_lib.check_model_checkpoint_dir(init_checkpoint)
        _check_init_config(convert.load_config(init_checkpoint), model, init_checkpoint)
    if data_dir is not None and not pathlib.Path(data_dir).expanduser().is_dir():
        raise gin_utils.GinUsageError(
            f"train.data_dir={data_dir!r}: no such directory. Point it at the task data (see "
            "/work/shared/data/README.md for the layout) or leave it None for the embedded suite.")
    env_dir = os.environ.get("OPTIML_DATA_DIR")
    if data_dir is None and env_dir and not pathlib.Path(env_dir).is_dir():
        raise gin_utils.GinUsageError(f"OPTIML_DATA_DIR={env_dir!r}: no such directory; fix or unset it")
    is_main = jax.process_index() == 0
    if is_main:
        model_dir_p.mkdir(parents=True, exist_ok=True)

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
    optimizer = dataclasses.replace(optimizer, total_steps=train_steps)
    trainer = trainer_lib.Trainer(
        OPTForCausalLM(model),
        trainer_lib.TrainerConfig(optimizer=optimizer, num_microbatches=num_microbatches, seed=seed),
        mesh, partition.logical_axis_rules, global_batch_size=batch_size, seq_len=seq_len)
    shard = partitioning.host_shard(mesh, batch_size)

    data = pipeline.TrainInput(
        mixture, vocab=vocab, batch_size=shard.local_batch_size, seq_len=seq_len, seed=seed,
        shard_index=shard.shard_index, num_shards=shard.num_shards, data_dir=data_dir, split=split,
        mixture_config=mixture_config, packing_window=packing_window)
    heldout = _heldout_rows(pipeline, vocab, batch_size, seq_len, data_dir, split, heldout_max_examples_per_task,
                            heldout_max_batches, seed, shard)

    checkpointer = ckpt_lib.Checkpointer(model_dir_p / CHECKPOINT_DIR, checkpoint)
    target = partitioning.with_shardings(trainer.abstract_state, trainer.state_shardings)
    restored = checkpointer.restore_latest(target)
    examples_seen: dict[str, int] = {}
    if restored is not None:
        state = restored.state
        meta = restored.input_state or {}
        if not meta.get("input"):
            raise ckpt_lib.CheckpointError(
                f"checkpoint {restored.step} in {checkpointer.directory} holds no input pipeline position; it was "
                "not written by optiml_jax.train -- use another MODEL_DIR")
        data.restore(meta["input"])
        examples_seen = dict(meta.get("examples_seen", {}))
        for step, reason in restored.skipped:
            _print(is_main, f"WARNING: checkpoint {step} was damaged and moved aside ({reason})")
        _print(is_main, f"resumed from {checkpointer.directory}/{restored.step}")
    elif init_checkpoint:
        params = convert.load_params(init_checkpoint, convert.load_config(init_checkpoint),
                                     trainer.state_shardings.params)
        state = trainer.init_state(params)
        del params
        _print(is_main, f"initialised from INIT_CHECKPOINT={init_checkpoint}")
    else:
        state = trainer.init_state()
        _print(is_main, f"initialised {model.name or 'model'} ({model.num_params():,} parameters) from scratch")
    start_step = int(jax.device_get(state.step))

    peak = (peak_flops_per_device * jax.device_count() if peak_flops_per_device
            else trainer_lib.measure_peak_flops(_jnp_dtype(model.dtype)))
    timer = trainer_lib.StepTimer(model.flops_per_token(seq_len), peak)
    writer = _MetricsWriter(model_dir_p, enabled=is_main)
    summary: dict[str, Any] = {"start_step": start_step}
    try:
        if heldout:
            summary["first_heldout_loss"] = _log_heldout(trainer, state, heldout, start_step, writer, is_main)
        bar = _progress(train_steps, start_step, enabled=is_main and progress_bar)
        tokens_per_step = batch_size * seq_len
        benchmarks = sorted(set(data.task_benchmark.values()))
        last_loss = float("nan")
        timer.start()
        for step in range(start_step, train_steps):
            local = next(data)
            state, metrics = trainer.train_step(state, local)
            loss = float(metrics["loss"])  # syncs: the step is done
            if not math.isfinite(loss):
                raise trainer_lib.NonFiniteLossError(step + 1, loss, trainer_lib.batch_task_names(
                    local, data.task_names))
            counts = trainer_lib.examples_per_benchmark(local, data.task_names, data.task_benchmark)
            counts = _sum_over_processes(counts, benchmarks)
            for k, v in counts.items():
                examples_seen[k] = examples_seen.get(k, 0) + v
            t = timer.lap(tokens_per_step)
            if step == start_step:  # the first step includes compilation
                t["tokens_per_s"], t["mfu"] = float("nan"), float("nan")
            last_loss = loss
            line = {"step": step + 1, "loss": loss, "lr": float(metrics["lr"]),
                    "grad_norm": float(metrics["grad_norm"]), "tokens_per_s": t["tokens_per_s"],
                    "mfu": t["mfu"], "target_tokens": float(metrics["target_tokens"]), "examples": counts}
            writer.write(line)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            done = step + 1
            paused = False
            if heldout and eval_every > 0 and done % eval_every == 0 and done != train_steps:
                _log_heldout(trainer, state, heldout, done, writer, is_main)
                paused = True
            if checkpointer.should_save(done, train_steps):
                checkpointer.save(done, state, {"input": data.state(), "examples_seen": examples_seen})
                paused = True
            if paused:  # throughput counts training only, not evaluation or checkpoint writes
                timer.start()
        if bar is not None:
            bar.close()
        checkpointer.wait()
        final_step = int(jax.device_get(state.step))
        summary.update(final_step=final_step, last_loss=last_loss, examples_seen=examples_seen)
        if heldout:
            summary["last_heldout_loss"] = _log_heldout(trainer, state, heldout, final_step, writer, is_main)
        if export_final:
            out = _export(model_dir_p / FINAL_DIR, state.params, model, vocab, convert)
            summary["exported"] = str(out)
            _print(is_main, f"final model written to {out} (load with optiml_jax.load_model({str(out)!r}))")
    finally:
        checkpointer.close()
        writer.close()
    return summary


# ---- helpers ----------------------------------------------------------------------------------------------

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
    if seq_len > model.max_position_embeddings:
        raise gin_utils.GinUsageError(
            f"train.seq_len={seq_len} exceeds the model's max_position_embeddings={model.max_position_embeddings}")


def _check_init_config(stored: model_configs.OPTConfig, wanted: model_configs.OPTConfig, path: str) -> None:
    # Shapes and architecture must agree; dtype, dropout, remat and kernels may differ on purpose.
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
              "max_position_embeddings", "word_embed_proj_dim", "do_layer_norm_before", "remove_final_layer_norm",
              "enable_bias", "layer_norm_elementwise_affine")
    diff = [f"{f}: checkpoint {getattr(stored, f)!r} vs model_config {getattr(wanted, f)!r}"
            for f in fields if getattr(stored, f) != getattr(wanted, f)]
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
            convert._copy_tokenizer(pathlib.Path(tokenizer_dir), out / convert.TOKENIZER_DIR)
    multihost_utils.sync_global_devices("export_done")
    return out


class _MetricsWriter:
    """metrics.jsonl lines plus TensorBoard scalars (process 0 only)."""

    def __init__(self, model_dir: pathlib.Path, enabled: bool):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if enabled:
            self._file = open(model_dir / METRICS_FILE, "a", encoding="utf-8")
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(model_dir / "tb"))
            except ImportError:  # TensorBoard output is optional
                logger.warning("tensorboardX is not installed; no TensorBoard events")

    def write(self, line: Mapping[str, Any]) -> None:
        """Appends one JSON line (NaN written as null) and its scalars to TensorBoard."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in line.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(line["step"])
            for k, v in line.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}" if k != "heldout_loss" else "eval/heldout_loss", v, step)
                elif isinstance(v, Mapping):
                    for sub, n in v.items():
                        self._tb.add_scalar(f"examples/{sub}", n, step)

    def close(self) -> None:
        """Flushes and closes the outputs."""
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


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
    # Registers the task layer's configurables (mixture_config, data_dir, the splits) before gin locks.
    from optiml_jax.tasks import catalogue, mixtures, splits  # noqa: F401

    gin_utils.parse_gin(args.gin_files, args.gin_bindings, args.search_paths)
    try:
        summary = train()
    except (gin_utils.GinUsageError, ckpt_lib.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except trainer_lib.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except FileNotFoundError as e:
        print(f"error: {e}\n(unset OPTIML_DATA_DIR to train on the embedded suite, or point it at a data folder "
              "laid out as described in README.md, 'Real data')", file=sys.stderr)
        return 2
    except Exception as e:
        # Errors from the data and model layers name their file/field; show them without a traceback wall.
        from optiml_jax.models.convert import CheckpointError as ConvertError

        if isinstance(e, ConvertError):
            print(f"error: INIT_CHECKPOINT: {e}", file=sys.stderr)
            return 2
        raise
    print(json.dumps({k: v for k, v in summary.items() if k != "examples_seen"}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring); returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return gin_utils.run_cli(_main, argv, help_fn=_help)


if __name__ == "__main__":
    sys.exit(main())
