"""Downloads of public task data that is not shipped with the project (the data dir is resolved in `optiml_jax.data_dir`).

CLI::

    python -m optiml_jax.data fetch bigbench [--data_dir D] [--index_url URL] [--force] [--no_progress]

``fetch bigbench`` puts the PyPI ``bigbench`` 1.0.0 sdist (358 MB, Apache-2.0; the full BIG-bench JSON tasks) at
``<data_dir>/bigbench/bigbench-1.0.0.tar.gz`` without installing or unpacking it, then builds the task index (see
`optiml_jax.tasks.bigbench`). The file's URL and sha256 come from the registry's simple index, the same place pip
reads them; the sha256 is also pinned here and both must agree. (`pip download` itself cannot fetch this sdist: it
always builds the sdist's metadata, which runs its setup code and then fails on the package's direct-URL
dependency on bleurt.) A download in progress lives in ``<archive>.part`` with a ``.part.json`` marker naming the
URL and hash; an interrupted fetch resumes from there with an HTTP range request. An archive that fails the
checksum or the index pass is deleted and fetched once more; a second failure is an error.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import html.parser
import http.client
import json
import logging
import os
import pathlib
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# user_cache_dir is re-exported: callers (and tests) read the default download folder from this CLI module too.
from optiml_jax.data_dir import fetch_dir, user_cache_dir

log = logging.getLogger(__name__)

DEFAULT_INDEX_URL = "https://pypi.org/simple"
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download could not be completed or verified."""


class RegistryUnreachableError(FetchError):
    """The package registry could not be reached (no network, DNS failure, HTTP 5xx)."""


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """What `fetch_bigbench` did."""

    archive: pathlib.Path
    downloaded: bool          # False when a verified archive and a current index were already there
    download_seconds: float
    index_seconds: float
    num_task_files: int
    num_examples: int


class _LinkParser(html.parser.HTMLParser):
    """Collects ``(filename, href)`` of the anchors of a PEP 503 simple-index page."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None and data.strip():
            self.links.append((data.strip(), self._href))
            self._href = None


def resolve_distribution(package: str, filename: str, *, index_url: str = DEFAULT_INDEX_URL,
                         timeout: float = 60.0) -> tuple[str, str, int | None]:
    """``(url, sha256, size or None)`` of one file of a package, from a PEP 691 (JSON) or PEP 503 (HTML) index."""
    page = f"{index_url.rstrip('/')}/{package}/"
    req = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        "User-Agent": "optiml-jax-fetch",
    })
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = resp.read()
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise RegistryUnreachableError(f"package index {page}: HTTP {e.code}") from e
        raise FetchError(f"package index {page}: HTTP {e.code}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise RegistryUnreachableError(f"package index {page} unreachable: {e}") from e
    if "json" in ctype:
        for f in json.loads(body).get("files", []):
            if f.get("filename") == filename:
                sha = f.get("hashes", {}).get("sha256")
                if not sha:
                    raise FetchError(f"package index {page}: no sha256 for {filename}")
                return urllib.parse.urljoin(page, f["url"]), sha, f.get("size")
    else:
        parser = _LinkParser()
        parser.feed(body.decode("utf-8", "replace"))
        for name, href in parser.links:
            if name == filename:
                url, _, frag = urllib.parse.urljoin(page, href).partition("#")
                if not frag.startswith("sha256="):
                    raise FetchError(f"package index {page}: no sha256 for {filename}")
                return url, frag[len("sha256="):], None
    raise FetchError(f"package index {page} has no file {filename}")


def sha256_file(path: pathlib.Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download_resumable(url: str, dest: pathlib.Path, *, sha256: str, size: int | None = None,
                       progress: bool = True, timeout: float = 60.0, retries: int = 5) -> None:
    """Downloads ``url`` to ``dest`` through ``dest.part``, resuming with HTTP ranges, and checks its sha256.

    ``dest.part.json`` marks a partial download (URL and expected hash); a partial file whose marker names another
    hash is discarded. ``dest`` appears (atomic rename) only after the whole file hashed to ``sha256``.
    """
    part = dest.with_name(dest.name + ".part")
    marker = dest.with_name(dest.name + ".part.json")
    wanted = {"url": url, "sha256": sha256, "size": size}
    try:
        old = json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, json.JSONDecodeError):
        old = None
    if old is None or old.get("sha256") != sha256:
        part.unlink(missing_ok=True)
    marker.write_text(json.dumps(wanted))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=size, desc=f"downloading {dest.name}", unit="B", unit_scale=True, unit_divisor=1024,
                   file=sys.stderr)
    attempt = 0
    try:
        while True:
            have = part.stat().st_size if part.is_file() else 0
            if size is not None and have == size:
                break
            if size is not None and have > size:
                part.unlink()
                have = 0
            if bar is not None:
                bar.n = have
                bar.refresh()
            headers = {"User-Agent": "optiml-jax-fetch"}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                    if have and r.status != 206:
                        have = 0  # the server ignored the range: start over
                    total = (have + int(r.headers["Content-Length"])) if r.headers.get("Content-Length") else size
                    if bar is not None and total:
                        bar.total = total
                    with open(part, "ab" if have else "wb") as f:
                        while chunk := r.read(_CHUNK):
                            f.write(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                if size is None or part.stat().st_size >= size:
                    break
                raise http.client.IncompleteRead(b"", size - part.stat().st_size)
            except urllib.error.HTTPError as e:
                if e.code == 416 and have:  # range past the end: the partial file is bad
                    part.unlink(missing_ok=True)
                    continue
                raise FetchError(f"downloading {url}: HTTP {e.code}") from e
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                attempt += 1
                if attempt > retries:
                    raise RegistryUnreachableError(
                        f"downloading {url}: {e} (after {retries} retries; run the fetch again to resume from "
                        f"{part})") from e
                log.warning("download interrupted (%s); resuming (try %d of %d)", e, attempt, retries)
                time.sleep(min(2.0 * attempt, 10.0))
    finally:
        if bar is not None:
            bar.close()
    got = sha256_file(part)
    if got != sha256:
        part.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        raise FetchError(f"downloading {url}: sha256 {got} != expected {sha256}; the partial file was deleted")
    os.replace(part, dest)
    marker.unlink(missing_ok=True)


def _remove_bigbench(archive: pathlib.Path) -> None:
    from optiml_jax.tasks import bigbench  # lazy: importing the task package registers every task (seconds)
    index_path, cache_path = bigbench.cache_paths(archive)
    for p in (archive, index_path, cache_path):
        p.unlink(missing_ok=True)


def fetch_bigbench(data_dir: str | os.PathLike | None = None, *, index_url: str | None = None,
                   progress: bool = True, force: bool = False, timeout: float = 60.0) -> FetchResult:
    """Fetches and indexes the BIG-bench sdist into ``<data_dir>/bigbench/`` (idempotent, resumable).

    Skips everything when a current index of the pinned archive is already there (unless ``force``). An archive
    that fails the checksum or the index pass is deleted and downloaded once more.
    """
    from optiml_jax.tasks import bigbench  # lazy: importing the task package registers every task (seconds)
    root = fetch_dir(data_dir)
    folder = root / "bigbench"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"--data_dir {root}: cannot create {folder}: {e}") from e
    if not os.access(folder, os.W_OK):
        raise FetchError(f"--data_dir {root}: {folder} is not writable; pass a writable --data_dir")
    archive = folder / bigbench.ARCHIVE_NAME
    if force:
        _remove_bigbench(archive)
    if archive.is_file():
        try:
            index = bigbench.load_index(archive, build=False)
            if index["archive"]["sha256"] == bigbench.ARCHIVE_SHA256:
                return FetchResult(archive, False, 0.0, 0.0, index["num_task_files"], index["num_examples"])
        except bigbench.BigBenchError:
            pass  # no current index: verify and index below
    index_url = index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL
    download_s = 0.0
    downloaded = False
    refetched = False
    while True:
        if not archive.is_file():
            url, sha, size = resolve_distribution(bigbench.PACKAGE, bigbench.ARCHIVE_NAME, index_url=index_url,
                                                  timeout=timeout)
            if sha != bigbench.ARCHIVE_SHA256:
                raise FetchError(f"{index_url}: {bigbench.ARCHIVE_NAME} has sha256 {sha}, but the pinned one is "
                                 f"{bigbench.ARCHIVE_SHA256}; refusing a file that changed upstream")
            t0 = time.perf_counter()
            download_resumable(url, archive, sha256=sha, size=size or bigbench.ARCHIVE_SIZE, progress=progress,
                               timeout=timeout)
            download_s += time.perf_counter() - t0
            downloaded = True
            problem = None  # download_resumable verified the sha256
        else:
            got = sha256_file(archive)
            problem = None if got == bigbench.ARCHIVE_SHA256 else f"sha256 {got} != pinned {bigbench.ARCHIVE_SHA256}"
        if problem is None:
            t0 = time.perf_counter()
            try:
                index = bigbench.build_index(archive, progress=progress)
                return FetchResult(archive, downloaded, download_s, time.perf_counter() - t0,
                                   index["num_task_files"], index["num_examples"])
            except bigbench.BigBenchArchiveError as e:
                problem = str(e)
        if refetched:
            raise FetchError(f"{archive}: still bad after a fresh download: {problem}")
        log.warning("%s: %s; deleting it and downloading it again", archive, problem)
        print(f"{archive}: {problem}; deleting it and downloading it again", file=sys.stderr)
        _remove_bigbench(archive)
        refetched = True


def _derive_bbh_cli(data_dir: str | None, out_dir: str | None) -> int:
    from optiml_jax.tasks import bbh, bigbench  # lazy: importing the task package registers every task (seconds)
    src = bigbench.find_source(data_dir)
    if src is None:
        print(f"error: derive bbh: no BIG-bench source under --data_dir={data_dir!r} (run: python -m "
              "optiml_jax.data fetch bigbench)", file=sys.stderr)
        return 1
    out = pathlib.Path(out_dir) if out_dir else user_cache_dir() / "bbh_derived"
    try:
        counts = bbh.derive_bbh(src, out)
    except (bbh.BBHDeriveError, bigbench.BigBenchError, OSError) as e:
        print(f"error: derive bbh from {src}: {e}", file=sys.stderr)
        return 1
    print(f"{out}: {len(counts)} BBH tasks, {sum(counts.values())} examples from {src} "
          f"(not derivable: {', '.join(sorted(bbh.NOT_DERIVABLE))})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    from optiml_jax.tasks import bigbench  # lazy: importing the task package registers every task (seconds)
    parser = argparse.ArgumentParser(prog="python -m optiml_jax.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download public task data into the data dir")
    fetch.add_argument("dataset", choices=["bigbench"], help="what to fetch")
    fetch.add_argument("--data_dir", default=None,
                       help="data directory (default: $OPTIML_DATA_DIR, else ~/.cache/optiml_jax)")
    fetch.add_argument("--index_url", default=None,
                       help=f"package index (default: $PIP_INDEX_URL, else {DEFAULT_INDEX_URL})")
    fetch.add_argument("--force", action="store_true", help="delete what is there and fetch again")
    fetch.add_argument("--no_progress", action="store_true", help="no progress bars")
    fetch.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    derive = sub.add_parser("derive", help="build a benchmark's files from fetched data (bbh: from BIG-bench)")
    derive.add_argument("dataset", choices=["bbh"], help="what to derive")
    derive.add_argument("--data_dir", default=None,
                        help="where the BIG-bench source is looked up (default: $OPTIML_DATA_DIR, else "
                             "~/.cache/optiml_jax)")
    derive.add_argument("--out_dir", default=None, help="output folder (default: ~/.cache/optiml_jax/bbh_derived)")
    args = parser.parse_args(argv)
    if args.command == "derive":
        return _derive_bbh_cli(args.data_dir, args.out_dir)
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        res = fetch_bigbench(args.data_dir, index_url=args.index_url, progress=not args.no_progress,
                             force=args.force, timeout=args.timeout)
    except (FetchError, bigbench.BigBenchError) as e:
        print(f"error: fetch bigbench: {e}", file=sys.stderr)
        return 1
    if res.downloaded or res.index_seconds:
        print(f"{res.archive}: {res.num_task_files} task.json files, {res.num_examples} examples "
              f"(download {res.download_seconds:.1f} s, index {res.index_seconds:.1f} s)")
    else:
        print(f"{res.archive}: already fetched and indexed ({res.num_task_files} task.json files, "
              f"{res.num_examples} examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
