"""OPTVocabulary against the HF GPT-2 tokenizers, on the real data's texts."""
from __future__ import annotations

import csv
import glob
import gzip
import json
import pathlib
import pickle
import random
import shutil

import numpy as np
import pytest

from optiml_jax.tokenizer import OPTVocabulary, gpt2_files_dir, load_vocabulary

transformers = pytest.importorskip("transformers")

# Hand-made texts covering what byte-level BPE gets wrong most easily.
EDGE_TEXTS = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "Hello world", " Hello  world ", "Hello\n\nworld\n",
    "a    b     c", "trailing spaces   ", "   leading spaces", "tab\tseparated\tvalues\t",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 and flags 🇫🇷", "Ünïcödé façade naïve résumé", "日本語のテキスト、句読点。",
    "Русский текст", "العربية", "हिन्दी", "ελληνικά", "中文 混合 English", "\u200b zero\u200bwidth", "\u00a0nbsp",
    "can't won't I'm you'll they've he'd it's", "CAN'T WON'T", "1234567890 3.14159 -42 1e-10",
    "<|endoftext|>", "text<|endoftext|>more", "</s> and <s> and <pad> and <unk>", "a</s>b",
    "```python\ndef f(x):\n    return x  # comment\n```", "https://example.com/path?q=1&r=2#frag",
    "\\n literal backslash-n", "combining e\u0301 accent", "\r\nwindows\r\nlines", "mixed\u3000ideographic space",
]


def _texts_with_special_literals(texts, literals):
    return [t for t in texts if any(lit in t for lit in literals)]


@pytest.fixture(scope="module")
def corpus(real_data_dir: pathlib.Path) -> list[str]:
    """Texts from every SuperNI task file plus CoT, BBH and non-English SuperNI data (deterministic sample)."""
    rng = random.Random(0)
    texts: list[str] = []
    task_files = sorted(glob.glob(str(real_data_dir / "superni" / "tasks" / "*.json")))
    assert len(task_files) >= 800, "expected the 875 SuperNI task files"
    for path in task_files:
        task = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        texts.extend(task.get("Definition") or [])
        for ex in (task.get("Positive Examples") or [])[:2] + (task.get("Negative Examples") or [])[:1]:
            texts.extend(str(ex.get(k, "")) for k in ("input", "output", "explanation"))
        instances = task.get("Instances") or []
        for inst in rng.sample(instances, min(3, len(instances))):
            texts.append(inst["input"])
            texts.extend(inst["output"][:2])
    for path in sorted(glob.glob(str(real_data_dir / "flan_cot" / "*_train.tsv"))):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        for row in rows[:60]:
            texts.extend(cell.replace("\\n", "\n") for cell in row)
    for path in sorted(glob.glob(str(real_data_dir / "bbh" / "bbh" / "*.json"))):
        examples = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))["examples"]
        for ex in examples[:8]:
            texts.extend([ex["input"], ex["target"]])
    for path in sorted(glob.glob(str(real_data_dir / "bbh" / "cot-prompts" / "*.txt")))[:10]:
        texts.append(pathlib.Path(path).read_text(encoding="utf-8"))
    for path in sorted(glob.glob(str(real_data_dir / "superni_extra" / "instances_extra" / "task1239_*.jsonl.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for _, line in zip(range(40), f):
                inst = json.loads(line)
                texts.append(inst["input"])
                texts.extend(inst["output"] if isinstance(inst["output"], list) else [inst["output"]])
    texts.extend(EDGE_TEXTS)
    texts = [t for t in texts if isinstance(t, str)]
    assert len(texts) > 8000
    return texts


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> pathlib.Path:
    """GPT-2's files under HF names, so transformers can load the same vocabulary."""
    d = tmp_path_factory.mktemp("gpt2")
    src = gpt2_files_dir()
    shutil.copy(src / "encoder.json", d / "vocab.json")
    shutil.copy(src / "vocab.bpe", d / "merges.txt")
    return d


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory) -> pathlib.Path:
    """An OPT-style renumbered vocabulary: fairseq specials first, GPT-2 tokens shifted by 4, 50,265 entries."""
    d = tmp_path_factory.mktemp("opt")
    src = gpt2_files_dir()
    gpt2_vocab = json.loads((src / "encoder.json").read_text(encoding="utf-8"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for tok, i in sorted(gpt2_vocab.items(), key=lambda kv: kv[1]):
        vocab[tok] = i + 4
    for extra in ("madeupword0000", "madeupword0001", "madeupword0002", "<mask>"):
        vocab[extra] = len(vocab)
    assert len(vocab) == 50265
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.copy(src / "vocab.bpe", d / "merges.txt")
    return d


def _hf_fast(folder, **special):
    return transformers.GPT2TokenizerFast.from_pretrained(str(folder), **special)


OPT_SPECIALS = dict(bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def test_default_vocabulary_layout():
    v = OPTVocabulary.default()
    assert v.num_tokens == 50257
    assert v.vocab_size == 50264 and v.vocab_size % 8 == 0
    assert v.bos_id == v.eos_id == 50256
    assert v.pad_id == 50257 and v.pad_id >= v.num_tokens  # never produced by the BPE
    assert v.unk_id is None
    assert v.encode("Hello world") == [15496, 995]
    assert OPTVocabulary.default() is v  # cached
    assert load_vocabulary(None) is v


def test_gpt2_ids_match_hf(corpus, gpt2_dir):
    v = OPTVocabulary.from_dir(gpt2_dir)
    assert v == OPTVocabulary.default()  # same files content, same conventions
    hf = _hf_fast(gpt2_dir)
    ours = v.encode_batch(corpus)
    ref = hf(corpus, add_special_tokens=False)["input_ids"]
    mismatches = [t for t, a, b in zip(corpus, ours, ref) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]!r}"
    # The single-text path agrees with the batch path.
    for t, ids in list(zip(corpus, ours))[::97]:
        assert v.encode(t) == ids


def test_gpt2_ids_match_hf_slow_sample(corpus, gpt2_dir):
    v = OPTVocabulary.default()
    slow = transformers.GPT2Tokenizer.from_pretrained(str(gpt2_dir))
    sample = random.Random(1).sample(corpus, 250) + EDGE_TEXTS
    for t in sample:
        assert v.encode(t) == slow.encode(t, add_special_tokens=False), t[:200]


def test_opt_renumbered_ids_match_hf(corpus, opt_dir):
    v = OPTVocabulary.from_dir(opt_dir)
    assert (v.bos_id, v.eos_id, v.pad_id, v.unk_id) == (2, 2, 1, 3)
    assert v.num_tokens == 50265 and v.vocab_size == 50272
    hf = _hf_fast(opt_dir, **OPT_SPECIALS)
    ours = v.encode_batch(corpus)
    ref = hf(corpus, add_special_tokens=False)["input_ids"]
    mismatches = [t for t, a, b in zip(corpus, ours, ref) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]!r}"
    # Without special-token literals the renumbering is exactly GPT-2's ids shifted by 4.
    gpt2 = OPTVocabulary.default()
    specials = ("</s>", "<s>", "<pad>", "<unk>", "<|endoftext|>")
    plain = [t for t in corpus if not any(s in t for s in specials)][::5]
    for t, ids in zip(plain, v.encode_batch(plain)):
        assert ids == [i + 4 for i in gpt2.encode(t)]
    assert v.encode("a</s>b") == [v.encode("a")[0], 2, v.encode("b")[0]]
    assert v != gpt2


def test_tokenizer_json_layout(tmp_path, opt_dir, corpus):
    hf = _hf_fast(opt_dir, **OPT_SPECIALS)
    hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {k: {"content": tok} for k, tok in OPT_SPECIALS.items()}), encoding="utf-8")
    v = OPTVocabulary.from_dir(tmp_path)
    assert (v.bos_id, v.eos_id, v.pad_id, v.unk_id, v.vocab_size) == (2, 2, 1, 3, 50272)
    sample = corpus[::7]
    assert v.encode_batch(sample) == OPTVocabulary.from_dir(opt_dir).encode_batch(sample)


def test_decode_round_trip_and_special_handling(corpus):
    v = OPTVocabulary.default()
    plain = [t for t in corpus if "<|endoftext|>" not in t]
    ids = v.encode_batch(plain)
    assert v.decode_batch(ids) == plain
    for t, row in list(zip(plain, ids))[::50]:
        assert v.decode(row) == t
        assert v.decode(np.asarray(row, dtype=np.int32)) == t
    hello = v.encode("Hello world")
    noisy = [v.bos_id] + hello[:1] + [v.pad_id, 50263, 99999, -1] + hello[1:] + [v.eos_id, v.pad_id]
    assert v.decode(noisy) == "Hello world"
    assert v.decode([]) == ""
    assert v.decode_batch(np.array([[v.bos_id] + hello, hello + [v.pad_id]])) == ["Hello world"] * 2
    with pytest.raises(ValueError, match="1-D"):
        v.decode([[1, 2]])
    with pytest.raises(TypeError, match="integer"):
        v.decode([1.5, 2.0])


def test_opt_decode_skips_specials(opt_dir):
    v = OPTVocabulary.from_dir(opt_dir)
    ids = [2] + v.encode("Instruction tuning") + [2, 1, 1, 3, 50270]
    assert v.decode(ids) == "Instruction tuning"


def test_seqio_integration():
    import seqio
    import tensorflow as tf

    v = OPTVocabulary.default()
    assert isinstance(v, seqio.Vocabulary)
    ids = v.encode_tf(tf.constant("Hello world"))
    assert ids.dtype == tf.int32 and ids.numpy().tolist() == [15496, 995]
    ragged = v.encode_tf(tf.constant(["Hello world", "", "日本"]))
    assert ragged.to_list() == [[15496, 995], [], v.encode("日本")]
    assert v.decode_tf(tf.constant([50256, 15496, 995, 50257])).numpy().decode() == "Hello world"
    assert [s.decode() for s in v.decode_tf(tf.constant([[15496, 995], [50256, 995]])).numpy()] == [
        "Hello world", " world"]
    # Inside a tf.data graph, through seqio's own tokenize preprocessor.
    ds = tf.data.Dataset.from_tensor_slices({"inputs": ["Hello world", "Ünïcödé 😀"], "targets": ["a", "b c"]})
    features = {k: seqio.Feature(vocabulary=v, add_eos=False) for k in ("inputs", "targets")}
    out = list(seqio.preprocessors.tokenize(ds, features).as_numpy_iterator())
    assert out[0]["inputs"].tolist() == [15496, 995]
    assert out[1]["inputs"].tolist() == v.encode("Ünïcödé 😀")
    assert out[1]["targets"].tolist() == v.encode("b c")
    with pytest.raises(ValueError, match="rank"):
        v.encode_tf(tf.constant([["a"]]))


def test_pickle_equality_and_hash(gpt2_dir, opt_dir):
    v = OPTVocabulary.default()
    w = pickle.loads(pickle.dumps(v))
    assert w == v and hash(w) == hash(v)
    assert w.encode("Pickled text") == v.encode("Pickled text")
    o = OPTVocabulary.from_dir(opt_dir)
    assert len({v, w, OPTVocabulary.from_dir(gpt2_dir), o}) == 2
    # Different conventions on the same files are a different vocabulary.
    assert OPTVocabulary.from_dir(opt_dir, pad_to_multiple_of=64) != o
    assert OPTVocabulary.from_dir(opt_dir, pad_to_multiple_of=64).vocab_size == 50304


def test_special_token_resolution(tmp_path, opt_dir):
    shutil.copytree(opt_dir, tmp_path / "tok")
    d = tmp_path / "tok"
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                           "pad_token": "<pad>", "unk_token": "<unk>"}))
    v = OPTVocabulary.from_dir(d)
    assert (v.bos_id, v.eos_id) == (0, 2)
    assert OPTVocabulary.from_dir(d, bos_token="</s>").bos_id == 2  # explicit arguments win
    with pytest.raises(ValueError, match="not in the vocabulary"):
        OPTVocabulary.from_dir(d, pad_token="<nope>")
    (d / "special_tokens_map.json").write_text("{broken")
    with pytest.raises(ValueError, match="special_tokens_map.json"):
        OPTVocabulary.from_dir(d)


def test_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OPTVocabulary.from_dir(tmp_path / "missing")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        OPTVocabulary.from_dir(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "vocab.json").write_text("not json")
    with pytest.raises(ValueError, match="vocab.json"):
        OPTVocabulary.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ValueError, match="no EOS"):
        OPTVocabulary.from_dir(tmp_path)
    v = OPTVocabulary.from_dir(tmp_path, eos_token="b")
    assert (v.eos_id, v.bos_id, v.pad_id, v.vocab_size) == (1, 1, 2, 8)
    with pytest.raises(TypeError, match="str"):
        OPTVocabulary.default().encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1"):
        OPTVocabulary.default().encode_batch(["ok", 3])  # type: ignore[list-item]


def test_from_checkpoint(tmp_path, opt_dir, caplog):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(opt_dir, ckpt / "tokenizer")
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": 50272}))
    assert OPTVocabulary.from_checkpoint(ckpt) == OPTVocabulary.from_dir(opt_dir)
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": 50000}))
    with pytest.raises(ValueError, match="config.json"):
        OPTVocabulary.from_checkpoint(ckpt)
    bare = tmp_path / "bare"
    bare.mkdir()
    with caplog.at_level("WARNING"):
        assert OPTVocabulary.from_checkpoint(bare) is OPTVocabulary.default()
    assert "no tokenizer/" in caplog.text
    with pytest.raises(FileNotFoundError, match="no tokenizer/"):
        OPTVocabulary.from_checkpoint(bare, allow_default=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OPTVocabulary.from_checkpoint(tmp_path / "nope")


# --- the embedded suite's own vocabulary (optiml_jax/tasks/embedded_vocab.py) -----------------------------------

def _embedded():
    from optiml_jax.tasks import embedded_vocab

    return embedded_vocab, OPTVocabulary.from_dir(embedded_vocab.embedded_tokenizer_dir())


def test_embedded_vocabulary_is_what_the_suite_gives(tmp_path):
    ev, _ = _embedded()
    ev.write(tmp_path)
    committed = pathlib.Path(ev.embedded_tokenizer_dir())
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in tmp_path.iterdir())
    for p in committed.iterdir():  # rebuild after changing the suite: python -m optiml_jax.tasks.embedded_vocab
        assert p.read_bytes() == (tmp_path / p.name).read_bytes(), p.name


def test_embedded_vocabulary_ids_round_trip_and_hf_parity():
    ev, v = _embedded()
    # OPT's special ids, 2,048 rows: the tiny model's vocab_size (gin/models/tiny_cpu_embedded.gin).
    assert (v.bos_id, v.eos_id, v.pad_id, v.unk_id, v.num_tokens, v.vocab_size) == (2, 2, 1, 3, 2048, 2048)
    texts = list(ev.corpus())
    ids = v.encode_batch(texts)
    assert all(v.decode(i) == t for i, t in zip(ids, texts))
    assert not any(v.unk_id in i for i in ids)
    # Byte-level: any text encodes and decodes back, not only the suite's.
    plain = [t for t in EDGE_TEXTS if not any(s in t for s in ("<s>", "</s>", "<pad>", "<unk>"))]
    assert [v.decode(v.encode(t)) for t in plain] == plain
    # Trained on the suite, it is at least as compact there as GPT-2's 50,257 tokens.
    gpt2 = OPTVocabulary.default().encode_batch(texts)
    assert sum(map(len, ids)) <= sum(map(len, gpt2))
    # Hugging Face reads the same folder with the same ids and special tokens.
    hf = transformers.AutoTokenizer.from_pretrained(ev.embedded_tokenizer_dir())
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (2, 2, 1, 3)
    sample = texts[::50] + plain
    assert [hf(t, add_special_tokens=False).input_ids for t in sample] == [v.encode(t) for t in sample]


def test_embedded_vocabulary_from_checkpoint(tmp_path):
    ev, v = _embedded()
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ev.embedded_tokenizer_dir(), ckpt / "tokenizer")
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": 2048}))
    assert OPTVocabulary.from_checkpoint(ckpt) == v
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": 50272}))  # a larger model still fits it
    assert OPTVocabulary.from_checkpoint(ckpt) == v
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": 1024}))
    with pytest.raises(ValueError, match="smaller than the tokenizer's 2048 ids"):
        OPTVocabulary.from_checkpoint(ckpt)
    assert ev.main(["--vocab_size=100", f"--out_dir={tmp_path / 'x'}"]) == 2
