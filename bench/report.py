"""The benchmark record: schema check and markdown rendering (pure functions of the JSON record)."""
from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
SECTIONS: tuple[str, ...] = ("peak", "train_step", "mfu", "memory", "packing", "input", "decoding",
                             "rank_classification", "engines", "scaling", "paper_scale", "attention", "gpu")
TOP_LEVEL: tuple[str, ...] = ("schema_version", "mode", "machine", "settings", "sections", "targets", "errors",
                              "timings_s", "peak_rss_bytes")


def validate_record(record: dict[str, Any]) -> list[str]:
    """Problems with a benchmark record's structure (empty list = valid). Checks shape, never speed."""
    problems = [f"missing top-level key {k!r}" for k in TOP_LEVEL if k not in record]
    if problems:
        return problems
    if record["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {record['schema_version']!r} != {SCHEMA_VERSION}")
    for key in ("cpu_model", "cores", "jax", "torch", "date", "platform"):
        if key not in record["machine"]:
            problems.append(f"machine.{key} missing")
    for name in SECTIONS:
        if name not in record["sections"] and name not in record["errors"]:
            problems.append(f"section {name!r} neither present nor reported in errors")
    for t in record["targets"]:
        for key in ("name", "target", "value", "met", "status"):
            if key not in t:
                problems.append(f"target {t.get('name', '?')!r} lacks {key!r}")
    return problems


def _f(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return fmt.format(x)
    return str(x)


def _gflops(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.1f}"


def _render_engines(e: dict[str, Any]) -> list[str]:
    out = ["", "## Eval engines: ours vs HF PyTorch vs CTranslate2 (one interleaved run)", ""]
    if e.get("status"):
        return out + [e["status"]]
    names = e["engines"]
    others = [n for n in names if n != "ours_f32"]
    out += [f"{e['model']}, CTranslate2 {e['ctranslate2']}, {e['threads']} threads each; ratio = ours f32 / engine "
            "(> 1: ours faster); agreement = identical greedy tokens / largest |log-prob difference| vs ours.", "",
            "### Greedy decoding (new tokens/s)", "",
            "| batch | prompt | new | " + " | ".join(names) + " | " + " | ".join(f"ratio vs {n}" for n in others)
            + " | " + " | ".join(f"agreement {n}" for n in others) + " |",
            "|" + "---|" * (3 + len(names) + 2 * len(others))]
    for r in e["greedy"]:
        out.append(f"| {r['batch']} | {r['prompt_len']} | {r['new_tokens']} | "
                   + " | ".join(f"{r['engines'][n]['tokens_per_s']:.0f}" for n in names) + " | "
                   + " | ".join(_f(r['ratio_ours_over'][n]) for n in others) + " | "
                   + " | ".join(f"{r['token_agreement_with_ours'][n]:.0%}" for n in others) + " |")
    rc = e["rank_classification"]
    out += ["", f"### Rank classification ({rc['examples']} examples x {rc['candidates_per_example']} candidates, "
            f"prompts {rc['prompt_lens']} tokens, candidates {rc['candidate_lens']})", "",
            "| engine | examples/s | ratio ours / engine | max abs log-prob diff vs ours | same prediction |",
            "|---|---|---|---|---|"]
    for n in names:
        ag = rc["agreement_with_ours"].get(n, {})
        out.append(f"| {n} | {rc['engines'][n]['examples_per_s']:.1f} | {_f(rc['ratio_ours_over'].get(n))} | "
                   f"{_f(ag.get('max_abs_logprob_diff'), '{:.2e}')} | "
                   f"{'-' if not ag else format(ag['prediction_agreement'], '.0%')} |")
    return out


def _render_input(i: dict[str, Any]) -> list[str]:
    p = i["produce_s_per_batch"]
    out = ["", f"## Input wait ({i['data']}, {i['num_tasks']} tasks, {i['batch_size']} x {i['seq_len']}, {i['steps']} "
           f"steps x {i['rounds']} rounds, round-robin)", "",
           f"Simulated device step = mean production of one batch (pack + put, first batch left out): "
           f"{p['mean'] * 1e3:.1f} ms (median {p['median'] * 1e3:.1f}, max {p['max'] * 1e3:.1f}, first "
           f"{p['first'] * 1e3:.1f}); load average {i['load_average_start']} -> "
           f"{i['load_average_end']}; same batches in every loop: {i['same_batches_in_every_loop']}.", "",
           "| loop | input wait fraction (first batch excluded) | with the first batch | loop (s) |", "|---|---|---|---|"]
    for r in i["rows"]:
        name = "serial (before the feed)" if r["mode"] == "serial" else f"input feed, depth {r['depth']}"
        out.append(f"| {name} | {r['steady_input_wait_fraction']:.3f} | {r['input_wait_fraction']:.3f} | "
                   f"{r['loop_s']:.2f} |")
    return out


def render_markdown(record: dict[str, Any]) -> str:
    """A human-readable report of a benchmark record (tables per section, targets first)."""
    m, s = record["machine"], record["sections"]
    out = [f"# optiml-jax benchmark ({record['mode']})", "",
           f"{m.get('date')} on {m.get('cpu_model')} ({m.get('cores')} cores, platform {m.get('platform')}); "
           f"jax {m.get('jax')}, flax {m.get('flax')}, torch {m.get('torch')}, transformers {m.get('transformers')}; "
           f"load average at start {m.get('load_average_at_start')}, at end {m.get('load_average_at_end')}; "
           f"peak host RSS "
           f"{record['peak_rss_bytes'] / 2**30:.2f} GiB; total {record['timings_s'].get('total', 0):.0f} s.", "",
           "## Targets", "", "| target | goal | measured | status |", "|---|---|---|---|"]
    for t in record["targets"]:
        out.append(f"| {t['name']} | {t['target']} | {_f(t['value'])} | {t['status']} |")
    if "peak" in s:
        out += ["", "## Peak matmul (same run)", "", "| library | dtype | size | GFLOP/s (best) | GFLOP/s (median) |",
                "|---|---|---|---|---|"]
        for k, v in s["peak"].items():
            if v:
                out.append(f"| {k.split('_')[0]} | {v['dtype']} | {v['size']} | {_gflops(v['flops_per_s'])} | "
                           f"{_gflops(v['median_flops_per_s'])} |")
    if "train_step" in s:
        t = s["train_step"]
        out += ["", f"## Train step vs HF PyTorch ({t['model']}, batch {t['batch']} x {t['seq_len']}, f32, "
                f"dropout {t['dropout']}, HF attention {t['hf_attn_implementation']})", "",
                "| impl | median step (s) | best (s) | tokens/s |", "|---|---|---|---|",
                f"| ours (jit) | {t['ours']['median_s']:.3f} | {t['ours']['best_s']:.3f} | {t['ours']['tokens_per_s']:.0f} |",
                f"| HF | {t['hf']['median_s']:.3f} | {t['hf']['best_s']:.3f} | {t['hf']['tokens_per_s']:.0f} |",
                "", f"Ratio ours/HF: **{_f(t['ratio_ours_over_hf'])}x**"]
    if "mfu" in s:
        out += ["", "## MFU of our train step (CPU: against a matmul timed round-robin with each step, not a hardware peak; "
                "accelerators: the chip's dense bf16 spec, optiml_jax.flops)", "",
                "| model | dtype | seq | batch | step (s) | tokens/s | model GFLOP/s | peak GFLOP/s | MFU | best MFU |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["mfu"]:
            out.append(f"| {r['model']} | {r['dtype']} | {r['seq_len']} | {r['batch']} | {r['step']['median_s']:.3f} | "
                       f"{r['tokens_per_s']:.0f} | {_gflops(r['model_flops_per_s'])} | "
                       f"{_gflops(r['peak_flops_per_s'])} | {r['mfu']:.1%} | {r['best_mfu']:.1%} |")
    if "memory" in s:
        mem = s["memory"]
        out += ["", "## Memory", "", f"- peak host RSS: {record['peak_rss_bytes'] / 2**30:.2f} GiB",
                f"- device memory: {mem.get('device') or 'n/a (CPU)'}"]
        st = mem.get("step", {})
        if "activation_bytes_per_token" in st:
            out += [f"- {st['model']} at {st['seq_len']}: compiled step needs "
                    f"{st['activation_bytes_per_token'] / 1024:.0f} KiB per token of temporaries beyond "
                    f"{st['state_bytes'] / 2**20:.0f} MiB of train state; largest batch that fits "
                    f"{st['memory_limit_bytes'] / 2**30:.1f} GiB: {st['largest_batch_that_fits']} sequences"]
        elif st:
            out.append(f"- step memory: {st.get('status')}")
    if "packing" in s:
        p = s["packing"]
        ff = ", ".join(f"window {w}: {v:.1%}" for w, v in p["simulated_first_fit_fill"].items())
        out += ["", f"## Packing ({p['data']}, split {p['split']}, {p['num_tasks']} tasks, length {p['seq_len']})", "",
                f"- real (non-padding) tokens: **{p['real_token_fraction']:.1%}**; loss tokens "
                f"{p['loss_token_fraction']:.1%}; mean segment {p['mean_segment_length']:.0f} tokens",
                f"- pipeline: {p['pipeline_sequences_per_s']:.1f} packed sequences/s "
                f"({p['pipeline_tokens_per_s']:.0f} tokens/s); training consumes "
                f"{_f(p.get('train_sequences_per_s'))} sequences/s at this length "
                f"(pipeline/step ratio {_f(p.get('pipeline_over_train'))})",
                f"- same segments, simulated: in-order next-fit {p['simulated_next_fit_fill']:.1%}; "
                f"first-fit with look-ahead {ff}"]
    if "input" in s:
        out += _render_input(s["input"])
    if "decoding" in s:
        d = s["decoding"]
        out += ["", f"## Greedy decoding vs HF generate ({d['model']}, f32)", "",
                "| batch | prompt | new | ours tokens/s | HF tokens/s | ratio | token agreement |",
                "|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            out.append(f"| {r['batch']} | {r['prompt_len']} | {r['new_tokens']} | {r['ours']['tokens_per_s']:.0f} | "
                       f"{r['hf']['tokens_per_s']:.0f} | {_f(r['ratio_ours_over_hf'])} | {r['token_agreement']:.0%} |")
    if "rank_classification" in s:
        r = s["rank_classification"]
        out += ["", f"## Rank classification ({r['model']}, {r['examples']} examples x {r['candidates_per_example']} "
                f"candidates, prompts {r['prompt_lens']} tokens)", "",
                f"- ours (KV cache): {r['ours']['examples_per_s']:.1f} examples/s; HF with the prompt's KV cache "
                f"reused: {r['hf']['examples_per_s']:.1f} examples/s; ratio **{_f(r['ratio_ours_over_hf'])}x**",
                f"- naive HF full forward per candidate (earlier runs' baseline): "
                f"{r['hf_full']['examples_per_s']:.1f} examples/s; ratio {_f(r['ratio_ours_over_hf_full'])}x",
                f"- max |log-prob difference| {r['max_abs_logprob_diff']:.2e}; same prediction "
                f"{r['prediction_agreement']:.0%}"]
    if "engines" in s:
        out += _render_engines(s["engines"])
    if "scaling" in s:
        sc = s["scaling"]
        out += ["", f"## Scaling on {sc['num_devices']} fake CPU devices ({sc['model']}, batch {sc['batch']} x "
                f"{sc['seq_len']}; all devices share the same cores, ideal = 1.0)", "",
                "| mesh | (data, fsdp, model) | step (s) | relative to one device |", "|---|---|---|---|"]
        for name, r in sc["meshes"].items():
            ms = r["mesh_shape"]
            out.append(f"| {name} | ({ms['data']}, {ms['fsdp']}, {ms['model']}) | {r['step']['median_s']:.3f} | "
                       f"{_f(r['relative_step_time'])} |")
    if "paper_scale" in s:
        ps = s["paper_scale"]
        out += ["", f"## Paper-scale estimate ({ps['hardware']['name']}, length {ps['seq_len']})", "",
                "| model | GPUs | TP | seqs/DP rank | step (s) est. | paper step (s) | paper-implied MFU | "
                "GB/GPU (no accumulation) | microbatches to fit | GB/GPU then |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in ps["rows"]:
            then = r["memory_total_with_microbatches_bytes"]
            out.append(f"| {r['model']} | {r['gpus']} | {r['tensor_parallel']} | {r['sequences_per_dp_rank']:g} | "
                       f"{r['step_time_s']:.1f} | {r['paper_step_time_s']:.1f} | {r['paper_implied_mfu']:.0%} | "
                       f"{r['memory_total_per_gpu_bytes'] / 1e9:.1f} | {_f(r['microbatches_to_fit'])} | "
                       f"{'-' if then is None else f'{then / 1e9:.1f}'} |")
        out += ["", "Assumptions:"] + [f"- {a}" for a in ps["assumptions"]]
    if "attention" in s:
        from bench.attention import render_markdown as render_attention

        out += ["", "## Attention kernels (CPU: compiled memory, lowering for GPU/TPU, interpreter times)", ""]
        out += render_attention(s["attention"])
    g = s.get("gpu")
    out += ["", "## GPU-only measurements", ""]
    if not g or g.get("status"):
        out.append(f"{(g or {}).get('status', 'skipped: no GPU')}")
    else:
        out += ["| model | seq | batch | tokens/s | MFU (bf16 peak) |", "|---|---|---|---|---|"]
        for r in g.get("mfu", []):
            out.append(f"| {r['model']} | {r['seq_len']} | {r['batch']} | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} |")
    if record["errors"]:
        out += ["", "## Errors", ""] + [f"- {k}: {v.splitlines()[-1] if v else v}" for k, v in record["errors"].items()]
    return "\n".join(out) + "\n"
