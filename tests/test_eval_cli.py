"""The gin evaluation CLI (python -m optiml_jax.eval) on tiny checkpoints and the embedded suite."""
import json
import os
import re

import jax
import pytest

from optiml_jax import eval as eval_cli
from optiml_jax.models.configs import get_config
from optiml_jax.models.convert import save_checkpoint
from optiml_jax.models.opt import OPTForCausalLM

RUN = "--gin.optiml_jax.eval.run_eval"
SMALL = [f"{RUN}.tasks=('embedded_ni_cause_effect', 'embedded_ni_analogy_opposites')", f"{RUN}.shots=(0,)",
         f"{RUN}.max_examples=2", f"{RUN}.max_new_tokens=2", f"{RUN}.progress=False"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    config = get_config("tiny")
    out = []
    for seed in (0, 1):
        params = OPTForCausalLM(config).init_params(jax.random.PRNGKey(seed))
        out.append(save_checkpoint(root / f"run{seed}" / "final", jax.device_get(params), config))
    return [str(p.parent) for p in out]  # run dirs: the CLI finds final/ itself


def cli(*args):
    return eval_cli.main(["--gin_file=gin/eval/tiny_cpu.gin", *args])


def test_tiny_cpu_gin_trained_vs_untrained(ckpts, tmp_path, capsys):
    out = tmp_path / "ev"
    # The gin file pins the tiny-cpu architecture: a checkpoint of another size is refused, naming the fields.
    assert cli(f"--gin.CHECKPOINT='{ckpts[0]}'", f"--gin.EVAL_OUTPUT_DIR='{out}'", *SMALL) == 2
    err = capsys.readouterr().err
    assert "not the configured model" in err and "hidden_size" in err

    assert cli(f"--gin.CHECKPOINT='{ckpts[0]}'", f"--gin.EVAL_OUTPUT_DIR='{out}'", *SMALL,
               f"{RUN}.expected_model=None") == 0
    stdout = capsys.readouterr().out
    assert "Per-level gains of run0 over untrained init" in stdout and str(out / "report.md") in stdout
    for f in ("report.md", "comparison.png", "summary.json", "run0/results.json", "run0/categories.png",
              "untrained_init/results.json"):
        assert os.path.isfile(out / f), f


def test_compare_two_checkpoints(ckpts, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli("--compare", ckpts[0], ckpts[1], f"--gin.EVAL_OUTPUT_DIR='{out}'", *SMALL,
               f"{RUN}.expected_model=None") == 0
    printed = capsys.readouterr().out
    assert "Per-level gains of run0 over run1" in printed
    # Each gain with its paired 95% bootstrap interval, also in the top-level results.json.
    assert re.search(r"Average: 0-shot [+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", printed), printed
    top = json.loads((out / "results.json").read_text())
    lo, hi = top["gain_intervals"]["average"]["0"]
    assert lo <= top["gains"]["average"]["0"] <= hi
    assert sorted(os.listdir(out)) == ["comparison.png", "report.md", "results.json", "run0", "run1",
                                    "summary.json"]


def test_cli_errors(ckpts, tmp_path, capsys):
    base = [f"--gin.EVAL_OUTPUT_DIR='{tmp_path}'", f"{RUN}.expected_model=None", f"{RUN}.progress=False"]
    assert cli(f"--gin.CHECKPOINT='{tmp_path / 'missing'}'", *base) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli(f"--gin.CHECKPOINT='{ckpts[0]}'", f"{RUN}.tasks=('nope',)", *base) == 2
    assert "unknown evaluation task(s)" in capsys.readouterr().err
    assert eval_cli.main(["--gin_file=gin/eval/optiml_validation.gin", f"--gin.EVAL_OUTPUT_DIR='{tmp_path}'"]) == 2
    assert "no checkpoint to evaluate" in capsys.readouterr().err
    assert cli("--compare", ckpts[0]) == 2
    assert "two checkpoint paths" in capsys.readouterr().err
    assert cli(f"{RUN}.no_such_param=1") == 2
    assert "no_such_param" in capsys.readouterr().err
    assert cli("--help") == 0
    assert "run_eval.compare_untrained" in capsys.readouterr().out
