"""The tutorial notebooks run headless, in quick mode, and do what they say (files, figures, self-checks).

Each notebook runs in a fresh python3 kernel (nbclient + ipykernel) inside a temporary working directory, with
OPTIML_NB_QUICK=1 and one CPU device. Together they take about 2 minutes on a 2-core machine.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parent.parent
NB_DIR = REPO / "notebooks"
NOTEBOOKS = ("quickstart.ipynb", "convert_and_evaluate.ipynb", "mixtures.ipynb")
CELL_TIMEOUT_S = 300


def _data_dir() -> pathlib.Path | None:
    """The real data (the rule of conftest's real_data_dir fixture: `data_dir.find_real_data_dir`), or None."""
    from optiml_jax.data_dir import find_real_data_dir

    return find_real_data_dir(fallbacks=[REPO.parent / "shared" / "data"])


def _kernel_name() -> str:
    """The python3 kernel of this interpreter, registered for the user if no kernelspec is visible."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        from ipykernel import kernelspec

        kernelspec.install(user=True)
    return "python3"


def _execute(name: str, tmp_path: pathlib.Path, monkeypatch, *, data_dir: pathlib.Path | None = None,
             extra_env: dict[str, str] | None = None):
    """Runs notebook ``name`` in quick mode; returns (executed notebook, its OPTIML_NB_WORKDIR)."""
    work = tmp_path / "work"
    env = {
        "OPTIML_NB_QUICK": "1",
        "OPTIML_NB_WORKDIR": str(work),
        # One CPU device, as on a Colab CPU runtime (conftest's 8 fake devices would only slow the kernel).
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_PLATFORMS": "cpu",
        "USE_TF": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.update(extra_env or {})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("OPT_CHECKPOINT", "OPTIML_NB_PARITY"):
        if key not in env:
            monkeypatch.delenv(key, raising=False)
    if data_dir is None:
        monkeypatch.delenv("OPTIML_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("OPTIML_DATA_DIR", str(data_dir))
    nb = nbformat.read(NB_DIR / name, as_version=4)
    run_dir = tmp_path / "cwd"  # not the repository: the notebook must not depend on the working directory
    run_dir.mkdir()
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=_kernel_name(),
                                     resources={"metadata": {"path": str(run_dir)}})
    client.execute()
    return nb, work


def _outputs(nb, kind: str) -> list[str]:
    """All outputs of one kind: "stream" texts, or the payloads of a MIME type (e.g. "image/png")."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "stream" and out.output_type == "stream":
                found.append(out.text)
            elif out.output_type in ("display_data", "execute_result") and kind in out.get("data", {}):
                found.append(out.data[kind])
    return found


def _first_cell_is_noop_install(nb) -> None:
    # Installed already (the project's environment): the cell only imports and reports the version.
    text = "".join(_outputs(nb, "stream")[:1])
    assert text.startswith("optiml_jax ") and " from " in text and text.count("\n") == 1, text


# ---- static checks -----------------------------------------------------------------------------------------


def test_notebooks_are_clean_and_built_from_source():
    """Committed notebooks: valid nbformat v4, no outputs, identical to notebooks/build_notebooks.py's cells."""
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / name, as_version=4)
        nbformat.validate(nb)
        assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: clear the outputs"
        # The install cell comes first and only installs when optiml_jax cannot be imported.
        assert "find_spec(\"optiml_jax\") is None" in code[0].source and "REPO_URL" in code[0].source
        assert "OPTIML_NB_QUICK" in code[1].source
    result = subprocess.run([sys.executable, str(NB_DIR / "build_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---- execution ------------------------------------------------------------------------------------------------


def test_quickstart(tmp_path, monkeypatch):
    nb, work = _execute("quickstart.ipynb", tmp_path, monkeypatch)
    _first_cell_is_noop_install(nb)
    text = "".join(_outputs(nb, "stream"))
    markdown = "\n".join(_outputs(nb, "text/markdown"))
    # Bench tables (the catalogue's benchmarks) and the three levels of both evaluation splits.
    assert "| SuperNI |" in markdown and "| Embedded-NI |" in markdown
    for split in ("validation", "test"):
        for level in ("Fully held-out", "Partially supervised", "Fully supervised"):
            assert f"| {split} | {level} |" in markdown
    assert "===== 0-shot prompt" in text and "===== 2-shot prompt" in text and "candidates: [" in text
    # Training: every step logged, held-out loss at 0, 4, 8 and lower at the end; an exported model.
    lines = [json.loads(x) for x in (work / "tiny_cpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 9))
    heldout = {r["step"]: r["heldout_loss"] for r in lines if "heldout_loss" in r}
    assert sorted(heldout) == [0, 4, 8] and heldout[8] < heldout[0]
    assert (work / "tiny_cpu" / "final" / "config.json").is_file()
    # Evaluation of both splits, trained vs untrained, shown as report + figures.
    for split in ("validation", "test"):
        out = work / "eval" / split
        summary = json.loads((out / "summary.json").read_text())
        assert summary["labels"] == ["tiny_cpu", "untrained init"]
        assert set(summary["overall"]["tiny_cpu"]) == {"0", "2"}
        assert (out / "comparison.png").is_file() and (out / "tiny_cpu" / "categories.png").is_file()
        assert f"# {split} evaluation" in markdown
    assert (work / "bench_tasks.png").is_file() and (work / "loss.png").is_file()
    assert len(_outputs(nb, "image/png")) >= 2 + 2 * 2  # bench plot, loss curve, 2 figures per split


def test_convert_and_evaluate_stand_in(tmp_path, monkeypatch):
    data_dir = _data_dir()  # evaluates on the paper's split when the real data is there
    nb, work = _execute("convert_and_evaluate.ipynb", tmp_path, monkeypatch, data_dir=data_dir)
    _first_cell_is_noop_install(nb)
    text = "".join(_outputs(nb, "stream"))
    assert "HF checkpoint (stand-in)" in text and "converted " in text
    assert "max |logit difference|" in text  # the parity check ran (and its assert passed)
    assert text.count("->") >= 6  # three prompts, greedy and beam search
    assert text.count("log-likelihood") == 7  # 2 + 2 + 3 candidates scored
    ckpt = work / "converted"
    assert {p.name for p in ckpt.iterdir()} >= {"config.json", "params", "tokenizer"}
    assert json.loads((ckpt / "config.json").read_text())["num_hidden_layers"] == 2
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["split"] == "validation" and set(results["level_scores"]) == {
        "fully_heldout", "partially_heldout", "supervised"}
    if data_dir is not None:  # real tasks, not the embedded suite
        assert not any(t.startswith("embedded_") for t in results["tasks"])
    assert "# validation evaluation: stand-in" in "\n".join(_outputs(nb, "text/markdown"))
    assert _outputs(nb, "image/png")


@pytest.mark.parametrize("with_data", [False, True], ids=["embedded", "real_data"])
def test_mixtures(tmp_path, monkeypatch, with_data):
    data_dir = _data_dir() if with_data else None
    if with_data and data_dir is None:
        pytest.skip("no real data directory: set OPTIML_DATA_DIR or place the data at ../shared/data")
    nb, work = _execute("mixtures.ipynb", tmp_path, monkeypatch, data_dir=data_dir)
    _first_cell_is_noop_install(nb)
    shares = json.loads((work / "benchmark_shares.json").read_text())
    fixed = shares["OPT-IML proportions 4/2/20/25/45/2/2"]
    pooled = shares["example-proportional"]
    eps_values = ["128", "256", "512", "1024", "2048", "4096", "8192", "16384", "1000000"]
    assert list(fixed) == eps_values
    for eps in eps_values:
        assert sum(fixed[eps].values()) == pytest.approx(1.0) and sum(pooled[eps].values()) == pytest.approx(1.0)
        assert fixed[eps] == pytest.approx(fixed["4096"])  # fixed proportions: EPS cannot move a benchmark
        assert fixed[eps]["Reasoning"] == pytest.approx(0.01) and pooled[eps]["Reasoning"] == pytest.approx(0.01)
    # SuperNI 25 vs PromptSource 45, renormalised over the benchmarks present, after the 1 % reasoning share.
    assert fixed["4096"]["SuperNI"] / fixed["4096"]["PromptSource"] == pytest.approx(25 / 45)
    # Example-proportional: PromptSource's huge datasets take over once EPS stops capping them.
    assert pooled["128"]["SuperNI"] > 0.8 and pooled["1000000"]["PromptSource"] > 0.5
    audit = json.loads((work / "leakage_summary.json").read_text())
    assert audit["injected"]["flagged_fraction"] > 0.01
    if data_dir is None:
        from optiml_jax.tasks import pipeline

        # Every embedded training task audited (the audit measures the bench without its decisions), none flagged.
        embedded = pipeline.get_bench(None, "embedded", apply_leakage_decisions=False)
        assert audit["summary"]["train_tasks"] == len(embedded.train_tasks) > 0
        assert audit["summary"]["pairs_flagged"] == 0
    else:
        # The quick audit covers training tasks whose source names an evaluation task's. Since SuperNI's
        # "adverserial_qa" spelling is an alias of "adversarial_qa", the split's source rule leaves none of them
        # above 1 % (the PromptSource AdversarialQA tasks used to be flagged against task1640 here).
        assert audit["summary"]["train_tasks"] > 0 and audit["summary"]["pairs_flagged"] == 0
        assert not (work / "leakage_decisions.tsv").exists()
    assert len(_outputs(nb, "image/png")) >= 2


@pytest.mark.parametrize("name, variable, value, message", [
    ("convert_and_evaluate.ipynb", "OPT_CHECKPOINT", "{tmp}/no-such-checkpoint", "OPT_CHECKPOINT="),
    ("mixtures.ipynb", "OPTIML_DATA_DIR", "{tmp}", "expected 'superni' inside it"),
    ("quickstart.ipynb", "OPTIML_NB_QUICK", "maybe", "OPTIML_NB_QUICK='maybe': use 1 or 0"),
])
def test_bad_settings_fail_in_the_parameters_cell(tmp_path, monkeypatch, name, variable, value, message):
    """A wrong environment variable stops the notebook at its parameters cell, naming the variable."""
    env = {variable: value.format(tmp=tmp_path)}
    with pytest.raises(nbclient.exceptions.CellExecutionError) as info:
        _execute(name, tmp_path, monkeypatch, extra_env=env,
                 data_dir=pathlib.Path(env[variable]) if variable == "OPTIML_DATA_DIR" else None)
    assert message in str(info.value) and variable in str(info.value)
