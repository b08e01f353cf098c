"""Convert OPT checkpoints between Hugging Face and optiml-jax.

    python -m optiml_jax.convert --from_hf HF_DIR --out CKPT_DIR [--param_dtype float32] [--overwrite]
    python -m optiml_jax.convert --to_hf CKPT_DIR --out HF_DIR [--param_dtype bfloat16] [--overwrite]

HF_DIR is a local directory with config.json and weights (model.safetensors, sharded safetensors with an
index, or pytorch_model*.bin, the latter needing torch); tokenizer files found there are carried over.
CKPT_DIR may be a training run dir (its final/ export is used), as eval and infer accept.

Both directions stream one layer at a time (peak host memory about one layer plus the token embedding, not the
model). --to_hf restores on the mesh and processes of the training flags
(``--gin.optiml_jax.PartitionConfig.mesh_shape="{'data': 1, 'fsdp': 8, 'model': 1}"``,
``--gin.optiml_jax.DistributedConfig.*``): each parameter goes straight into its shards, is gathered one tensor
at a time, and process 0 writes sharded safetensors with the HF index.
"""
from __future__ import annotations

import argparse
import sys

from optiml_jax.models.configs import DTYPES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m optiml_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from_hf", metavar="HF_DIR", help="HF OPT directory to import")
    source.add_argument("--to_hf", metavar="CKPT_DIR", help="optiml-jax checkpoint to export")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist unless "
                                                                    "--overwrite)")
    parser.add_argument("--param_dtype", choices=DTYPES, default=None,
                        help="dtype of the written parameters (default: float32 on import, unchanged on export)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--max_shard_gb", type=float, default=5.0,
                        help="--to_hf: split model.safetensors into shards of at most this size (GiB)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the conversion; returns 0 on success, 1 on a checkpoint error, 2 on bad flags (message on stderr)."""
    from optiml_jax.infer import serving_from_cli

    parsed = serving_from_cli(argv)
    if parsed is None:
        return 2
    rest, setup = parsed
    args = _parser().parse_args(rest)
    if args.max_shard_gb <= 0:
        _parser().error(f"--max_shard_gb must be positive, got {args.max_shard_gb}")
    # Imported after argument parsing so that --help stays fast (these pull in jax and orbax).
    from optiml_jax.inference import param_shardings, resolve_checkpoint
    from optiml_jax.models.convert import CheckpointError, export_hf, import_hf, load_config
    from optiml_jax.models.opt import OPTForCausalLM

    try:
        if args.from_hf:
            config = import_hf(args.from_hf, args.out, param_dtype=args.param_dtype or "float32",
                               overwrite=args.overwrite)
            what = f"{args.from_hf} (HF) -> {args.out}"
        else:
            try:
                ckpt = resolve_checkpoint(args.to_hf)
            except FileNotFoundError as e:
                raise CheckpointError(f"--to_hf: {e}") from None
            shardings = param_shardings(OPTForCausalLM(load_config(ckpt)), setup.mesh, setup.rules)
            config = export_hf(ckpt, args.out, param_dtype=args.param_dtype, overwrite=args.overwrite,
                               max_shard_bytes=int(args.max_shard_gb * 2**30), shardings=shardings)
            what = f"{args.to_hf} -> {args.out} (HF)"
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {what}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_params():,} parameters, {config.param_dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
