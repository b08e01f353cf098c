"""Checkpoint conversion: HF <-> ours through the CLI, file formats, exact round trips, clear errors."""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import convert as cli
from optiml_jax.models import convert, hf_io
from optiml_jax.models.convert import CheckpointError, load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
import hf_reference  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def token_ids(request, tmp_path_factory) -> np.ndarray:
    """[2, 20] real GPT-2 ids of SuperNI inputs (random ids when the data or tokenizer is unavailable)."""
    try:
        texts = hf_reference.real_texts(request.getfixturevalue("real_data_dir"), n=6)
        ids = [x for x in hf_reference.gpt2_tokenize(texts, tmp_path_factory.mktemp("tok"), 20) if len(x) == 20]
        if len(ids) >= 2:
            return np.asarray(ids[:2], np.int32)
    except (pytest.skip.Exception, RuntimeError):
        pass
    return np.random.default_rng(0).integers(3, 50000, size=(2, 20), dtype=np.int32)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("hf")
    return {v: hf_reference.make_tiny_hf_opt(root, v, seed=3) for v in sorted(hf_reference.VARIANTS)}


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


def leftovers(parent: pathlib.Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def hf_state(path: pathlib.Path) -> dict[str, np.ndarray]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update({k: v.float().numpy() for k, v in safetensors_torch.load_file(file).items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(hf_reference.VARIANTS))
def test_cli_import_matches_hf_logits(variant, hf_dirs, token_ids, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert run_cli("--from_hf", hf_dirs[variant], "--out", ckpt) == 0
    assert "converted" in capsys.readouterr().out
    assert (ckpt / "config.json").is_file() and (ckpt / "params").is_dir()
    assert sorted(p.name for p in (ckpt / "tokenizer").iterdir()) == ["merges.txt", "vocab.json"]
    assert leftovers(tmp_path) == []

    model, params = load_model(ckpt)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(token_ids)))
    hf = hf_reference.load_hf_model(hf_dirs[variant])
    with torch.no_grad():
        ref = hf(torch.tensor(token_ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    # The package-level lazy entry point and a compute-dtype override.
    import optiml_jax

    model_bf16, _ = optiml_jax.load_model(str(ckpt), dtype="bfloat16")
    assert model_bf16.config.dtype == "bfloat16" and model_bf16.config.param_dtype == "float32"


@pytest.mark.parametrize("variant", sorted(hf_reference.VARIANTS))
def test_round_trip_hf_ours_hf_is_exact(variant, hf_dirs, tmp_path):
    ckpt, back = tmp_path / "ckpt", tmp_path / "hf-back"
    assert run_cli("--from_hf", hf_dirs[variant], "--out", ckpt) == 0
    assert run_cli("--to_hf", ckpt, "--out", back) == 0
    original, exported = hf_state(hf_dirs[variant]), hf_state(back)
    assert "lm_head.weight" not in exported
    assert set(exported) == set(original) - {"lm_head.weight"}
    for key, value in original.items():
        if key != "lm_head.weight":
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    with hf_reference._layer_norm_init_fix():
        model, info = transformers.OPTForCausalLM.from_pretrained(back, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert (back / "vocab.json").is_file() and (back / "merges.txt").is_file()


def test_bin_sharded_and_prefixed_inputs_give_the_same_params(tmp_path):
    model = hf_reference.make_tiny_hf_model("postln_proj", seed=5)
    model.save_pretrained(tmp_path / "st", safe_serialization=True)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="1MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    # OPTModel-style names ("decoder.*") as in some early checkpoints.
    (tmp_path / "prefixed").mkdir()
    shutil.copy(tmp_path / "st" / "config.json", tmp_path / "prefixed")
    state = {k.removeprefix("model."): v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    hf_io.write_safetensors(tmp_path / "prefixed" / "model.safetensors", sorted(state.items()))

    _, reference = hf_io.load_hf_checkpoint(tmp_path / "st")
    for name in ("bin", "sharded", "prefixed"):
        _, params = hf_io.load_hf_checkpoint(tmp_path / name)
        jax.tree.map(np.testing.assert_array_equal, params, reference)


def test_bfloat16_weights_round_trip_bit_exact(tmp_path):
    model = hf_reference.make_tiny_hf_model("preln", seed=7).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "hf")
    assert run_cli("--from_hf", tmp_path / "hf", "--out", tmp_path / "ckpt", "--param_dtype", "bfloat16") == 0
    _, params = load_model(tmp_path / "ckpt")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert run_cli("--to_hf", tmp_path / "ckpt", "--out", tmp_path / "back", "--max_shard_gb", "0.002") == 0
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()  # 2 MiB shards: several files
    assert json.loads((tmp_path / "back" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = transformers.OPTForCausalLM.from_pretrained(tmp_path / "back", torch_dtype=torch.bfloat16)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
def copy_hf(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(hf_dir: pathlib.Path, edit) -> None:
    """Edits model.safetensors (a dict of torch tensors) and writes it back with the safetensors library."""
    path = hf_dir / "model.safetensors"
    tensors = {k: v.clone() for k, v in safetensors_torch.load_file(path).items()}
    edit(tensors)
    safetensors_torch.save_file(tensors, path.with_suffix(".new"), metadata={"format": "pt"})
    path.with_suffix(".new").replace(path)


def cli_error(capsys, *args) -> str:
    assert run_cli(*args) == 1
    return capsys.readouterr().err


def test_missing_tensor_is_named(hf_dirs, tmp_path, capsys):
    hf = copy_hf(hf_dirs["preln"], tmp_path / "hf")
    rewrite_weights(hf, lambda t: t.pop("model.decoder.layers.1.fc2.bias"))
    err = cli_error(capsys, "--from_hf", hf, "--out", tmp_path / "ckpt")
    assert "'model.decoder.layers.1.fc2.bias'" in err and "missing" in err
    assert not (tmp_path / "ckpt").exists() and leftovers(tmp_path) == []


def test_wrong_shape_names_file_and_tensor(hf_dirs, tmp_path, capsys):
    hf = copy_hf(hf_dirs["preln"], tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    config["ffn_dim"] = 96
    (hf / "config.json").write_text(json.dumps(config))
    err = cli_error(capsys, "--from_hf", hf, "--out", tmp_path / "ckpt")
    assert "model.safetensors" in err and "'model.decoder.layers.0.fc1.weight'" in err
    assert "(128, 64)" in err and "(96, 64)" in err


def test_unsupported_dtype_unexpected_and_untied_tensors(hf_dirs, tmp_path, capsys):
    hf = copy_hf(hf_dirs["nobias"], tmp_path / "a")
    rewrite_weights(hf, lambda t: t.update({"model.decoder.layers.0.fc1.weight":
                                            t["model.decoder.layers.0.fc1.weight"].to(torch.int8)}))
    err = cli_error(capsys, "--from_hf", hf, "--out", tmp_path / "ckpt")
    assert "unsupported dtype I8" in err and "layers.0.fc1.weight" in err

    hf = copy_hf(hf_dirs["nobias"], tmp_path / "b")
    rewrite_weights(hf, lambda t: t.update({"model.decoder.extra.weight": torch.zeros(3)}))
    assert "unexpected tensor(s)" in cli_error(capsys, "--from_hf", hf, "--out", tmp_path / "ckpt")

    hf = copy_hf(hf_dirs["nobias"], tmp_path / "c")
    rewrite_weights(hf, lambda t: t.update({"lm_head.weight": t["model.decoder.embed_tokens.weight"] + 1}))
    assert "only tied output embeddings" in cli_error(capsys, "--from_hf", hf, "--out", tmp_path / "ckpt")


def test_missing_or_corrupt_inputs(hf_dirs, tmp_path, capsys):
    err = cli_error(capsys, "--from_hf", tmp_path / "nowhere", "--out", tmp_path / "ckpt")
    assert "nowhere" in err and "not found" in err

    hf = copy_hf(hf_dirs["preln"], tmp_path / "hf")
    (hf / "config.json").write_text("{not json")
    assert "config.json: invalid JSON" in cli_error(capsys, "--from_hf", hf, "--out", tmp_path / "ckpt")

    hf2 = copy_hf(hf_dirs["preln"], tmp_path / "hf2")
    data = (hf2 / "model.safetensors").read_bytes()
    (hf2 / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    err = cli_error(capsys, "--from_hf", hf2, "--out", tmp_path / "ckpt")
    assert "model.safetensors: not a valid safetensors file (truncated or corrupt?)" in err

    (hf2 / "model.safetensors").unlink()
    assert "no weights found" in cli_error(capsys, "--from_hf", hf2, "--out", tmp_path / "ckpt")


def test_our_checkpoint_errors(hf_dirs, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_model(tmp_path / "nowhere")
    ckpt = tmp_path / "ckpt"
    assert run_cli("--from_hf", hf_dirs["preln"], "--out", ckpt) == 0
    # Existing output is refused unless --overwrite; with it the dir is replaced atomically.
    assert "already exists" in cli_error(capsys, "--from_hf", hf_dirs["preln"], "--out", ckpt)
    assert run_cli("--from_hf", hf_dirs["nobias"], "--out", ckpt, "--overwrite") == 0
    assert json.loads((ckpt / "config.json").read_text())["enable_bias"] is False
    assert leftovers(tmp_path) == []

    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "ffn_dim": 64}))
    with pytest.raises(CheckpointError, match=r"layers_0/fc1/kernel has shape \(64, 128\), config.json expects "
                                              r"\(64, 64\)"):
        load_model(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**config, "hidden": 3}))
    with pytest.raises(CheckpointError, match=r"config.json: unknown OPTConfig field\(s\) \['hidden'\]"):
        load_model(ckpt)
    (ckpt / "config.json").write_text(json.dumps(config))
    shutil.rmtree(ckpt / "params")
    with pytest.raises(CheckpointError, match="params directory not found"):
        load_model(ckpt)
    # The CLI also accepts a run dir, so a folder without params/ is reported as holding no checkpoint.
    assert f"no checkpoint in {ckpt}" in cli_error(capsys, "--to_hf", ckpt, "--out", tmp_path / "hf")


def test_interrupted_write_leaves_nothing(hf_dirs, tmp_path, monkeypatch):
    config, params = hf_io.load_hf_checkpoint(hf_dirs["preln"])

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert, "copy_tokenizer", fail)
    monkeypatch.setattr(hf_io, "copy_tokenizer", fail)
    with pytest.raises(OSError, match="disk full"):
        convert.save_checkpoint(tmp_path / "ckpt", params, config, tokenizer_dir=hf_dirs["preln"])
    with pytest.raises(OSError, match="disk full"):
        hf_io.save_hf_checkpoint(tmp_path / "hf", params, config, tokenizer_dir=hf_dirs["preln"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--out", "x"])
    assert "one of the arguments --from_hf --to_hf is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--from_hf", "a", "--to_hf", "b", "--out", "x"])
    with pytest.raises(SystemExit):
        cli.main(["--from_hf", "a", "--out", "x", "--param_dtype", "int8"])


def test_checkpoint_carries_the_default_gpt2_tokenizer(tmp_path):
    """A model trained on the GPT-2 default vocabulary exports it under HF file names, and it loads back equal."""
    from optiml_jax import tokenizer as tok_lib
    from optiml_jax.models.configs import get_config
    from optiml_jax.models.opt import OPTForCausalLM

    config = get_config("tiny")
    params = OPTForCausalLM(config).init_params(jax.random.PRNGKey(0))
    out = convert.save_checkpoint(tmp_path / "ckpt", params, config, tokenizer_dir=tok_lib.gpt2_files_dir())
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["merges.txt", "vocab.json"]
    loaded = tok_lib.OPTVocabulary.from_checkpoint(out, allow_default=False)
    assert loaded == tok_lib.OPTVocabulary.default()
    assert loaded.encode("Hello world") == [15496, 995]
