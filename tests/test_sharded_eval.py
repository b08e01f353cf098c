"""Sharded and multi-host evaluation: the same checkpoint gives the same scores and predictions on every mesh,
and two gloo processes write the same results as one process."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from optiml_jax import eval as eval_cli
from optiml_jax import inference, partitioning
from optiml_jax.models.configs import get_config
from optiml_jax.models.convert import save_checkpoint
from optiml_jax.models.opt import OPTForCausalLM

REPO = pathlib.Path(__file__).resolve().parent.parent
RUN = "--gin.optiml_jax.eval.run_eval"
MESH = "--gin.optiml_jax.PartitionConfig.mesh_shape"
# One rank-classified and one generative task, a few examples each: the acceptance check stays small.
SMALL = [f"{RUN}.tasks=('embedded_ni_cause_effect', 'embedded_ni_analogy_opposites')", f"{RUN}.shots=(0,)",
         f"{RUN}.max_examples=4", f"{RUN}.max_new_tokens=4", f"{RUN}.progress=False", f"{RUN}.expected_model=None",
         f"{RUN}.compare_untrained=False", f"{RUN}.param_dtype='float32'", f"{RUN}.batch_size=4"]
MESHES = {"1,1,1": (1, 1, 1), "8,1,1": (8, 1, 1), "2,2,2": (2, 2, 2), "1,4,2": (1, 4, 2)}


def _mesh_flag(shape) -> str:
    return f"{MESH}={{'data': {shape[0]}, 'fsdp': {shape[1]}, 'model': {shape[2]}}}"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    config = get_config("tiny").replace(dropout=0.0)
    params = OPTForCausalLM(config).init_params(jax.random.PRNGKey(3))
    return str(save_checkpoint(tmp_path_factory.mktemp("sharded") / "ckpt", jax.device_get(params), config))


def _env(local_devices: int) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", USE_TF="0")
    return env


def _eval_args(ckpt: str, out: pathlib.Path, shape) -> list[str]:
    return ["--gin_file=gin/eval/tiny_cpu.gin", f"--gin.CHECKPOINT='{ckpt}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
            *SMALL, _mesh_flag(shape)]


def _load(out: pathlib.Path) -> tuple[dict, dict]:
    sub = out / "ckpt"
    results = json.loads((sub / "results.json").read_text())
    preds = {}
    for f in sorted((sub / "predictions").iterdir()):
        preds[f.name] = [json.loads(line) for line in f.read_text().splitlines()]
    return results, preds


def test_params_restored_into_their_shardings_in_the_serving_dtype(ckpt):
    mesh = partitioning.create_mesh({"data": 1, "fsdp": 4, "model": 2})
    pred = inference.Predictor.from_checkpoint(ckpt, param_dtype="bfloat16", mesh=mesh)
    fc1 = pred.params["layers_0"]["fc1"]["kernel"]  # (embed, mlp) -> (fsdp, model)
    assert fc1.dtype == jax.numpy.bfloat16 and pred.model.config.dtype == "bfloat16"
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert {s.data.shape for s in fc1.addressable_shards} == {(64 // 4, 256 // 2)}
    untrained = pred.untrained(0).params["layers_0"]["fc1"]["kernel"]
    assert untrained.sharding.spec == fc1.sharding.spec and untrained.dtype == fc1.dtype


def test_meshes_give_the_same_scores_and_predictions(ckpt, tmp_path):
    # (1, 1, 1) needs a one-device process; the others run here on the session's 8 fake devices.
    single = tmp_path / "1,1,1"
    code = "import sys; from optiml_jax import eval as e; sys.exit(e.main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *_eval_args(ckpt, single, (1, 1, 1))], cwd=REPO,
                          env=_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_results, ref_preds = _load(single)
    modes = {r["mode"] for records in ref_preds.values() for r in records}
    assert modes == {"rank_classification", "generation"}
    for name, shape in MESHES.items():
        if shape == (1, 1, 1):
            continue
        out = tmp_path / name
        assert eval_cli.main(_eval_args(ckpt, out, shape)) == 0
        results, preds = _load(out)
        assert preds.keys() == ref_preds.keys()
        for key in ref_preds:
            for a, b in zip(preds[key], ref_preds[key], strict=True):
                assert a["prediction"] == b["prediction"], (name, key, a["prompt"][-60:])
                np.testing.assert_allclose(a.get("candidate_scores", []), b.get("candidate_scores", []), atol=1e-4)
        for task, t in ref_results["tasks"].items():
            for shots, score in t["scores"].items():
                assert results["tasks"][task]["scores"][shots] == pytest.approx(score, abs=1e-4), (name, task)


WORKER = r'''
import sys
from optiml_jax import eval as e
port, nproc, pid, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
if nproc > 1:
    d = "--gin.optiml_jax.DistributedConfig"
    args += [f"{d}.coordinator_address='127.0.0.1:{port}'", f"{d}.num_processes={nproc}", f"{d}.process_id={pid}",
             f"{d}.initialization_timeout=120"]
sys.exit(e.main(args))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_results_of_one(ckpt, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # Parameters and the batch are both split over the two processes (fsdp spans them).
    shape = (1, 2, 1)
    one = tmp_path / "one"
    proc = subprocess.run([sys.executable, str(script), "0", "1", "0", *_eval_args(ckpt, one, shape)], cwd=REPO,
                          env=_env(2), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(port), "2", str(i), *_eval_args(ckpt, two, shape)],
                              cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "report:" in outs[0][0] and "report:" not in outs[1][0]  # only process 0 reports
    assert (one / "ckpt" / "results.json").read_text() == (two / "ckpt" / "results.json").read_text()
    r1, p1 = _load(one)
    r2, p2 = _load(two)
    assert p1.keys() == p2.keys()
    for key in p1:
        assert [r["prediction"] for r in p1[key]] == [r["prediction"] for r in p2[key]]


def test_infer_cli_takes_the_training_mesh_flags(ckpt, tmp_path, capsys):
    from optiml_jax import infer

    base = ["--checkpoint", ckpt, "--prompt", "Is it raining? Answer:", "--candidates", "yes", "no",
            "--gin.optiml_jax.serving.param_dtype='float32'"]
    scores = []
    for shape in ((8, 1, 1), (2, 2, 2), (1, 4, 2)):
        assert infer.main([*base, _mesh_flag(shape)]) == 0
        scores.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scores"])
    np.testing.assert_allclose(scores[1:], [scores[0]] * 2, atol=1e-4)
    assert infer.main([*base, f"{MESH}={{'data': 3}}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "mesh_shape" in err


def test_convert_to_hf_restores_on_the_mesh_and_streams_shards(ckpt, tmp_path):
    from optiml_jax import convert as convert_cli
    from optiml_jax.models.hf_io import HFWeights

    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    assert convert_cli.main(["--to_hf", ckpt, "--out", str(plain)]) == 0
    # A small shard limit forces several safetensors files and the HF index.
    assert convert_cli.main(["--to_hf", ckpt, "--out", str(sharded), "--max_shard_gb", str(4e6 / 2**30),
                             _mesh_flag((2, 2, 2))]) == 0
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    a, b = HFWeights(plain), HFWeights(sharded)
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        np.testing.assert_array_equal(a.get(key), b.get(key))
    assert convert_cli.main(["--to_hf", ckpt, "--out", str(tmp_path / "x"), f"{MESH}={{'model': 3}}"]) == 2
