"""The embedded suite's own tokenizer: a 2,048-id byte-level BPE trained on the suite's rendered prompts.

GPT-2's 50,257-token vocabulary makes the tiny CPU model mostly embedding: at hidden size 192 its tied LM head
holds 9.7M of 11.6M parameters and about three quarters of a training step's FLOPs, to predict ids the
embedded suite never uses (it has about 3,000 distinct words). This vocabulary is byte-level like GPT-2's (any
text encodes, nothing is unknown, decoding gives the exact text back) and keeps OPT's fairseq special ids
(``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 = BOS = EOS, ``<unk>`` 3), so it is an ordinary `OPTVocabulary` folder: a
run trained with it copies it into ``final/tokenizer/``, and evaluation, inference and conversion load it from
there like any checkpoint's tokenizer.

The committed ``embedded_tokenizer/`` (tokenizer.json and its HF config files) is derived: ``python -m optiml_jax.tasks.embedded_vocab``
rebuilds it from the suite (deterministically; a test checks the committed file is what the suite gives). The
real-data configs keep GPT-2's BPE.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterator, Sequence

import gin
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from optiml_jax.tasks import embedded_suite, prompts

VOCAB_SIZE = 2048
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq/OPT order: ids 0-3
TOKENIZER_DIR = pathlib.Path(__file__).resolve().parent / "embedded_tokenizer"
TOKENIZER_FILE = "tokenizer.json"
# OPT's special tokens, written out so Hugging Face loads the folder (AutoTokenizer, an exported HF directory) with
# the same ids as `OPTVocabulary`; without them it would add GPT-2's "<|endoftext|>" as a new token.
HF_SPECIAL_TOKENS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def corpus() -> Iterator[str]:
    """Every embedded example as the model sees it (definition, instance, delimiter, target), then its options.

    The delimiters cycle over the examples so each one is as frequent as in training.
    """
    for name, info in embedded_suite.embedded_tasks().items():
        for i, ex in enumerate(embedded_suite.embedded_examples(name)):
            p = prompts.render(info, ex, delimiter=prompts.DELIMITERS[i % len(prompts.DELIMITERS)])
            yield p.source + p.target
            yield from p.candidates


def build(vocab_size: int = VOCAB_SIZE) -> tokenizers.Tokenizer:
    """Trains the byte-level BPE on `corpus()`; the same tokenizer on every call and machine."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def write(out_dir: str | pathlib.Path, vocab_size: int = VOCAB_SIZE) -> pathlib.Path:
    """Builds the tokenizer and writes ``out_dir/tokenizer.json`` and its HF configs; returns the folder."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build(vocab_size).save(str(out / TOKENIZER_FILE), pretty=False)
    (out / "special_tokens_map.json").write_text(json.dumps(HF_SPECIAL_TOKENS, indent=2) + "\n")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **HF_SPECIAL_TOKENS, "model_max_length": 1024}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


@gin.configurable(module="optiml_jax.tasks")
def embedded_tokenizer_dir() -> str:
    """The committed tokenizer folder, for gin: ``train.tokenizer_dir = @optiml_jax.tasks.embedded_tokenizer_dir()``."""
    if not (TOKENIZER_DIR / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{TOKENIZER_DIR / TOKENIZER_FILE} is missing: rebuild it with "
                                "python -m optiml_jax.tasks.embedded_vocab")
    return str(TOKENIZER_DIR)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: rebuilds the committed tokenizer (or writes one to --out_dir)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=str(TOKENIZER_DIR), help="where tokenizer.json goes")
    parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        print(f"error: --vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (the byte alphabet and the "
              f"special tokens), got {args.vocab_size}", file=sys.stderr)
        return 2
    out = write(args.out_dir, args.vocab_size)
    print(f"wrote {out / TOKENIZER_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
