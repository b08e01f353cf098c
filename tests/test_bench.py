"""Performance suite: record schema and the pure helpers. Never asserts wall-clock numbers."""
import json
import math

import numpy as np
import pytest

from bench import engines, packing, paper_scale, report, run  # bench/ is importable from the repo root (pytest.ini)

# Sections that compile several extra programs (slow on 2 shared cores) are covered by slow tests below.
FAST_SECTIONS = ("peak", "train_step", "mfu", "packing", "decoding", "rank_classification", "engines", "gpu")


@pytest.fixture(scope="module")
def smoke_record(real_data_dir, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("OPTIML_DATA_DIR", str(real_data_dir))
    record = run.run_suite(run.Settings.smoke(), mode="smoke", only=FAST_SECTIONS, log=lambda _: None)
    out = tmp_path_factory.mktemp("bench")
    run.write_results(record, str(out))
    return record, out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_smoke_record_is_valid_and_written(smoke_record):
    record, out = smoke_record
    assert report.validate_record(record) == []
    ran_errors = {k: v for k, v in record["errors"].items() if not v.startswith("not run")}
    assert ran_errors == {}
    assert set(record["sections"]) == set(FAST_SECTIONS)
    on_disk = json.loads((out / "latest.json").read_text())
    assert on_disk["schema_version"] == report.SCHEMA_VERSION and on_disk["mode"] == "smoke"
    md = (out / "latest.md").read_text()
    for heading in ("## Targets", "## Peak matmul", "## Train step vs HF", "## MFU", "## Packing",
                    "## Greedy decoding", "## Rank classification", "## Eval engines", "## GPU-only"):
        assert heading in md
    assert record["machine"]["cores"] >= 1 and record["peak_rss_bytes"] > 0


def test_smoke_numbers_are_consistent(smoke_record):
    s = smoke_record[0]["sections"]
    assert s["peak"]["jax_f32"]["flops_per_s"] > 0 and s["peak"]["jax_bf16"]["flops_per_s"] > 0
    t = s["train_step"]
    assert t["ours"]["tokens_per_s"] > 0 and t["hf"]["tokens_per_s"] > 0
    assert math.isclose(t["ratio_ours_over_hf"], t["ours"]["tokens_per_s"] / t["hf"]["tokens_per_s"])
    # Both sides trained the same weights on the same batch: their losses agree to dropout noise.
    assert abs(t["ours"]["final_loss"] - t["hf"]["final_loss"]) < 0.5
    assert {r["dtype"] for r in s["mfu"]} == {"float32", "bfloat16"}
    for r in s["mfu"]:
        assert r["mfu"] > 0 and r["peak_flops_per_s"] > 0
        assert math.isclose(r["model_flops_per_s"], r["flops_per_token"] * r["tokens_per_s"])
        assert math.isclose(r["mfu"], r["model_flops_per_s"] / r["peak_flops_per_s"])
    # Greedy decoding of the same weights picks the same tokens; rank scores match HF's log-likelihoods.
    for r in s["decoding"]["rows"]:
        assert r["token_agreement"] >= 0.9
    assert s["rank_classification"]["max_abs_logprob_diff"] < 1e-3
    assert s["rank_classification"]["prediction_agreement"] == 1.0
    assert s["rank_classification"]["hf_cached_vs_full"]["max_abs_logprob_diff"] < 1e-3
    e = s["engines"]
    if e.get("status"):  # ctranslate2 is a bench-only extra
        assert e == {"status": engines.SKIPPED}
    else:
        for r in e["greedy"]:
            assert set(r["engines"]) == set(e["engines"]) and all(v > 0 for v in r["ratio_ours_over"].values())
            assert r["token_agreement_with_ours"]["hf_f32"] >= 0.9
            assert r["token_agreement_with_ours"]["ct2_f32"] >= 0.9
        agree = e["rank_classification"]["agreement_with_ours"]
        assert agree["hf_f32"]["max_abs_logprob_diff"] < 1e-3 and agree["ct2_f32"]["max_abs_logprob_diff"] < 1e-2
    p = s["packing"]
    assert 0.5 < p["real_token_fraction"] <= 1.0 and p["split"] == "optiml"
    assert s["gpu"] == {"status": "skipped: no GPU"}


def test_engines_skip_without_ctranslate2(monkeypatch):
    monkeypatch.setattr(engines, "ct2_version", lambda: None)
    lines = []
    out = engines.compare_engines("micro", batch_sizes=(1,), prompt_len=4, new_tokens=2, rank_examples=1,
                                  rank_candidates=2, rank_prompt_lens=(4, 4), rank_cand_lens=(1, 1), repeats=1,
                                  log=lines.append)
    assert out == {"status": "skipped: ctranslate2 not installed"} and "skipped: ctranslate2 not installed" in lines[0]
    assert "skipped: ctranslate2 not installed" in "\n".join(report._render_engines(out))


def test_targets_report_status():
    sections = {"train_step": {"ratio_ours_over_hf": 2.0},
                "mfu": [{"model": "125m-2l", "seq_len": 512, "dtype": "bfloat16", "mfu": 0.9},
                        {"model": "125m-2l", "seq_len": 512, "dtype": "float32", "mfu": 0.3}],
                "packing": {"real_token_fraction": 0.97}}
    by_name = {t["name"].split(" ")[0]: t for t in run.evaluate_targets(sections)}
    assert by_name["train"]["met"] is True and by_name["MFU,"]["met"] is False
    assert by_name["greedy"]["status"] == "not measured" and by_name["real"]["status"] == "met"


def test_validate_record_names_problems():
    assert "missing top-level key 'machine'" in report.validate_record({"schema_version": 1})
    record = {k: {} for k in report.TOP_LEVEL}
    record.update(schema_version=1, targets=[{"name": "x"}], errors={})
    problems = report.validate_record(record)
    assert "machine.cpu_model missing" in problems
    assert "section 'peak' neither present nor reported in errors" in problems
    assert "target 'x' lacks 'met'" in problems


def test_packing_simulations():
    lengths = [4, 3, 2, 3, 4, 2]
    # next-fit: [4] (3 does not fit) -> [3,2] -> [3] (4 does not fit) -> [4,2] open. Closed: 4, 5, 3 of 6.
    assert packing.next_fit_fill(lengths, 6) == pytest.approx(12 / 18)
    # First-fit over 2 open rows fills the gaps next-fit leaves behind.
    assert packing.windowed_first_fit_fill(lengths, 6, 2) > packing.next_fit_fill(lengths, 6)
    assert packing.windowed_first_fit_fill(lengths, 6, 1) == pytest.approx(packing.next_fit_fill(lengths, 6))
    with pytest.raises(ValueError, match="exceeds max_length"):
        packing.next_fit_fill([7], 6)
    with pytest.raises(ValueError, match="window"):
        packing.windowed_first_fit_fill(lengths, 6, 0)


def test_paper_scale_arithmetic():
    costs = {"heads": 12, "seq_len": 2048, "bytes_per_token_per_hidden": 0.0, "attention_bytes_per_token": 0.0,
             "logits_bytes_per_token_per_vocab": 0.0}
    r = paper_scale.estimate("opt-30b", costs, tensor_parallel=2, mfu=0.5)
    from optiml_jax.models.configs import get_config
    cfg = get_config("opt-30b")
    assert r["memory_per_gpu_bytes"]["model_state"] == pytest.approx(cfg.num_params() * 16 / 64)
    tokens = 256 * 2048
    assert r["step_time_s"] == pytest.approx(cfg.flops_per_token(2048) * tokens / (64 * 312e12 * 0.5))
    assert r["paper_step_time_s"] == pytest.approx(19 * 3600 / 4000)
    assert r["sequences_per_dp_rank"] == 8
    # Checkpoints: one bf16 residual per layer per token of the DP rank.
    assert r["memory_per_gpu_bytes"]["activation_checkpoints"] == pytest.approx(
        tokens / 32 * cfg.hidden_size * 2 * cfg.num_hidden_layers)
    with pytest.raises(ValueError, match="tensor_parallel"):
        paper_scale.estimate("opt-30b", costs, tensor_parallel=3, mfu=0.5)


def test_cli_rejects_unknown_section(capsys):
    with pytest.raises(SystemExit):
        run.main(["--only", "nonsense"])
    assert "unknown section" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_only_sections_and_scaling_subprocess():
    """memory, scaling (subprocess with 8 fake devices) and paper_scale on the micro model."""
    record = run.run_suite(run.Settings.smoke(), mode="smoke", only=("memory", "scaling", "paper_scale"),
                           log=lambda _: None)
    assert {k: v for k, v in record["errors"].items() if not v.startswith("not run")} == {}
    mem = record["sections"]["memory"]["step"]
    assert mem["activation_bytes_per_token"] > 0 and mem["largest_batch_that_fits"] > 0
    meshes = record["sections"]["scaling"]["meshes"]
    assert set(meshes) == {"single", "data", "fsdp", "model", "data+fsdp+model"}
    assert meshes["fsdp"]["mesh_shape"] == {"data": 1, "fsdp": 8, "model": 1}
    assert meshes["single"]["relative_step_time"] == 1.0
    rows = record["sections"]["paper_scale"]["rows"]
    assert {r["model"] for r in rows} == {"opt-30b", "opt-175b"}
    assert all(np.isfinite(r["memory_total_per_gpu_bytes"]) for r in rows)
    assert "## Scaling" in report.render_markdown(record)


def test_step_variants_compare_bf16_with_hf_under_bf16_autocast():
    """The bf16 step's like-for-like baseline is HF under torch's bf16 autocast (f32 weights and AdamW state)."""
    import torch

    from bench import train_step

    variants = {"f32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16"}}
    r = train_step.step_variants("micro", variants, batch=2, seq_len=16, repeats=1, peak_size=64,
                                 peak_seconds=0.01)
    e = r["entries"]
    assert {"f32", "bf16", "hf", "hf_bf16", "matmul_float32", "matmul_bfloat16"} == set(e)
    assert math.isclose(e["bf16"]["ratio_over_hf_bf16"], e["bf16"]["tokens_per_s"] / e["hf_bf16"]["tokens_per_s"])
    assert "ratio_over_hf_bf16" not in e["f32"]  # f32 is compared with HF's f32 step only
    md = train_step.variants_markdown(r)
    assert "vs HF bf16 autocast" in md and "| HF PyTorch, bf16 autocast (eager) |" in md
    assert all(line.count("|") == 9 for line in md.splitlines() if line.startswith("|"))

    cfg = train_step.bench_config("micro", 16)
    ours = train_step.OursStep(cfg, 2, 16)
    f32 = train_step.HFStep(cfg, ours.params_numpy(), ours.batch)
    bf16 = train_step.HFStep(cfg, ours.params_numpy(), ours.batch, autocast="bfloat16")
    f32(), bf16()
    assert f32.last_logits_dtype == torch.float32 and bf16.last_logits_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights stay f32
    assert abs(f32.last_loss - bf16.last_loss) < 0.1  # same weights and batch, bf16 rounding (+ dropout)
    with pytest.raises(ValueError, match="autocast"):
        train_step.HFStep(cfg, ours.params_numpy(), ours.batch, autocast="float16")


def test_malloc_library_names_the_mapped_allocator(tmp_path):
    from bench.common import malloc_library

    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert malloc_library(str(maps)) == "glibc"
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /lib/x86_64-linux-gnu/libtcmalloc.so.4\n")
    assert malloc_library(str(maps)) == "tcmalloc"
    assert malloc_library(str(tmp_path / "absent")) == "unknown"
