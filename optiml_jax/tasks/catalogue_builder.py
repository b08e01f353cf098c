"""The offline catalogue builder: regenerates tasks/catalogue.tsv from a data directory's fact files.

    python -m optiml_jax.tasks.catalogue_builder --build --data_dir DIR [--summary]

A tool, not a library module: nothing in `optiml_jax` imports it. The library reads the committed table through
`catalogue`; this module derives every row (category, metric, options, source split, role under the paper's split)
from SuperNI's, Flan's, PromptSource's and the reasoning collections' metadata.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import pathlib
import re
import sys
from typing import Iterable, Mapping

from optiml_jax.data_dir import DATA_DIR_ENV, resolve_data_dir
from optiml_jax.tasks import splits
from optiml_jax.tasks.catalogue import (
    BBH_PREFIX,
    CATALOGUE_PATH,
    CatalogueError,
    CatalogueRow,
    CATEGORY_MAP,
    COT_DATASETS,
    COT_PREFIX,
    FLAN_DATASETS,
    FLAN_PREFIX,
    label_set,
    map_category,
    normalize_source,
    PS_DATASETS,
    PS_PREFIX,
    ps_dataset_of,
    read_table,
    write_table,
)
from optiml_jax.tasks.schema import TaskInfo

log = logging.getLogger(__name__)

# Fallback for SuperNI rows with no category anywhere (neither in all_tasks_catalog.tsv, its
# alias rows, nor the task file): SuperNI names end with the task type.
SUPERNI_NAME_SUFFIX_CATEGORY: tuple[tuple[str, str], ...] = (
    ("language_identification", "Language Identification"),
    ("translation", "Translation"),
    ("named_entity_recognition", "Named Entity Recognition"),
    ("text_auto_completion", "Text Completion"),
    ("missing_word_prediction", "Fill in The Blank"),
    ("fill_in_the_blank", "Fill in The Blank"),
)

SUPERNI_NAME_CATEGORY_OVERRIDES: dict[str, str] = {
    # CODA-19 labels paper fragments by section (background, method, ...).
    "task352_coda-19_classification": "Section Classification",
}

# Source-dataset spellings of FLAN names that differ from other benchmarks' spelling.
FLAN_SOURCE_ALIASES: dict[str, str] = {
    "ag_news_subset": "ag_news", "bool_q": "boolq", "imdb_reviews": "imdb", "glue_mrpc": "mrpc",
    "glue_qqp": "qqp", "paws_wiki": "paws", "yelp_polarity_reviews": "yelp_polarity",
    "anli_r1": "anli", "anli_r2": "anli", "anli_r3": "anli", "arc_challenge": "ai2_arc",
    "arc_easy": "ai2_arc", "squad_v1": "squad_v1", "story_cloze": "story_cloze",
}


# --------------------------------------------------------------------------------------------
# Building the table from a data directory
# --------------------------------------------------------------------------------------------
def _read_tsv_dicts(path: pathlib.Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (needed to build the catalogue)")
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _superni_alias_key(name: str) -> str:
    return name.replace("-", "_").replace(".", "_")


def _pick_superni_rows(rows: list[dict[str, str]]) -> list[tuple[dict[str, str], list[dict[str, str]]]]:
    """Group the rows that spell one task two ways (FLAN writes "-" and "." as "_") and pick the
    official spelling: the default-track row, else the one with the official punctuation."""
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(_superni_alias_key(r["task"]), []).append(r)
    out = []
    for group in groups.values():
        default = [r for r in group if r["default_split"] in ("train", "test")]
        punct = [r for r in group if r["task"] != _superni_alias_key(r["task"])]
        out.append(((default or punct or group)[0], group))
    return out


def _superni_category(row: Mapping[str, str], group: list[dict[str, str]], task_json: Mapping | None,
                      where: str) -> str:
    name = row["task"]
    if name in SUPERNI_NAME_CATEGORY_OVERRIDES:
        return SUPERNI_NAME_CATEGORY_OVERRIDES[name]
    for r in [row] + group:
        if r.get("category"):
            return map_category(r["category"], where=where)
    if task_json and task_json.get("Categories"):
        return map_category(task_json["Categories"][0], where=where)
    for suffix, category in SUPERNI_NAME_SUFFIX_CATEGORY:
        if name.endswith(suffix):
            return category
    raise CatalogueError(f"{where}: task {name!r} has no category and no rule in "
                         "SUPERNI_NAME_SUFFIX_CATEGORY")


def _superni_source(row: Mapping[str, str], group: list[dict[str, str]], task_json: Mapping | None) -> str:
    for r in [row] + group:
        if r.get("source_dataset"):
            return r["source_dataset"].strip().rstrip(",")
    if task_json and task_json.get("Source"):
        return str(task_json["Source"][0]).strip()
    # SuperNI names are task<NNN>_<source>_<what>: the token after the number names the source.
    parts = row["task"].split("_")
    return parts[1] if len(parts) > 1 else ""


def _superni_options(task_json: Mapping | None) -> tuple[str, ...]:
    """`label_set` of a SuperNI task file's instances (references as the loader keeps them: non-empty strings)."""
    instances = (task_json or {}).get("Instances") or []
    outputs = []
    for inst in instances:
        raw = inst.get("output") if isinstance(inst, dict) else None
        raw = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        refs = [o for o in raw if isinstance(o, str) and o.strip()]
        if refs and isinstance(inst.get("input"), str) and inst["input"].strip():
            outputs.append(refs)
    return label_set(outputs)


def build_superni_rows(data: pathlib.Path) -> list[CatalogueRow]:
    """SuperNI rows from superni/all_tasks_catalog.tsv. The table spells 41 tasks twice (FLAN's
    underscore spelling beside the official one); each task is kept once, under its official name."""
    path = data / "superni" / "all_tasks_catalog.tsv"
    rows = _read_tsv_dicts(path)
    line_of = {r["task"]: i for i, r in enumerate(rows, start=2)}
    out = []
    for r, group in _pick_superni_rows(rows):
        where = f"{path}:{line_of[r['task']]}"
        split = r["default_split"]
        task_file = data / "superni" / "tasks" / f"{r['task']}.json"
        task_json = json.loads(task_file.read_text(encoding="utf-8")) if task_file.is_file() else None
        try:
            n = int(r.get("num_instances") or 0)
        except ValueError:
            raise CatalogueError(f"{where}: num_instances {r['num_instances']!r} is not an integer") from None
        info = TaskInfo(name=r["task"], benchmark="SuperNI",
                        category=_superni_category(r, group, task_json, where),
                        source_dataset=normalize_source(_superni_source(r, group, task_json)),
                        instruction_level="task", metric="rouge_l", num_instances=n,
                        options=_superni_options(task_json))
        out.append(CatalogueRow(info, source_split=split if split in ("train", "test") else "extra"))
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", s.lower()).strip("_")


def build_flan_rows(data: pathlib.Path) -> list[CatalogueRow]:
    """FLAN, Dialog and Program Synthesis rows of the Flan collection (inverted variants dropped:
    the paper neither trains nor evaluates on inverted templates)."""
    path = data / "catalogue" / "flan_collection_info.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (needed to build the catalogue)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    per_dataset: dict[str, list[str]] = {}
    for lineno, r in enumerate(rows, start=2):
        src, ds, generic = r["Source"], r["Dataset"], r["Generic Task Category"]
        if src not in ("FLAN", "FLAN/T0", "Dialog", "Program Synthesis"):
            continue
        if generic.startswith("Inverted "):
            continue
        if src in ("FLAN", "FLAN/T0"):
            if ds not in FLAN_DATASETS:
                raise CatalogueError(f"{path}:{lineno}: FLAN dataset {ds!r} has no entry in "
                                     "catalogue.FLAN_DATASETS")
            per_dataset.setdefault(ds, [])
            continue
        map_category(generic, where=f"{path}:{lineno}")  # fail early on unmapped labels
        cats = per_dataset.setdefault(ds, [])
        if generic not in cats:
            cats.append(generic)
    out = []
    for ds, generics in per_dataset.items():
        if ds in FLAN_DATASETS:
            category, metric = FLAN_DATASETS[ds]
            out.append(CatalogueRow(TaskInfo(
                name=FLAN_PREFIX + ds, benchmark="FLAN", category=category,
                source_dataset=normalize_source(FLAN_SOURCE_ALIASES.get(ds, ds)),
                instruction_level="instance", metric=metric)))  # type: ignore[arg-type]
            continue
        for generic in generics:
            name = FLAN_PREFIX + ds + ("" if len(generics) == 1 else "_" + _slug(generic))
            out.append(CatalogueRow(TaskInfo(
                name=name, benchmark="FLAN", category=CATEGORY_MAP[generic],
                source_dataset=normalize_source(ds), instruction_level="instance",
                metric="rouge_l")))
    return out


def build_ps_rows(data: pathlib.Path) -> list[CatalogueRow]:
    """PromptSource rows: one task per dataset; every T0 template of the Flan collection and of
    catalogue/t0_tasks.jsonl must belong to a known dataset."""
    csv_path = data / "catalogue" / "flan_collection_info.csv"
    with open(csv_path, encoding="utf-8", newline="") as f:
        for lineno, r in enumerate(csv.DictReader(f), start=2):
            if r["Source"] == "T0" and ps_dataset_of(r["Specific Task Category"]) is None:
                raise CatalogueError(f"{csv_path}:{lineno}: T0 template "
                                     f"{r['Specific Task Category']!r} matches no PS_DATASETS entry")
    sizes: dict[str, int] = {}
    t0_path = data / "catalogue" / "t0_tasks.jsonl"
    if t0_path.is_file():
        for lineno, line in enumerate(t0_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                template = rec["name"].split(":", 1)[-1]
                n_train = int(rec.get("splits", {}).get("train", 0))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise CatalogueError(f"{t0_path}:{lineno}: bad record ({e})") from None
            ds = ps_dataset_of(template)
            if ds is None:
                raise CatalogueError(f"{t0_path}:{lineno}: template {template!r} matches no "
                                     "PS_DATASETS entry")
            sizes[ds] = max(sizes.get(ds, 0), n_train)
    out = []
    for ds, (category, source, metric) in PS_DATASETS.items():
        out.append(CatalogueRow(TaskInfo(
            name=PS_PREFIX + ds, benchmark="PromptSource", category=category,
            source_dataset=normalize_source(source), instruction_level="instance",
            metric=metric, num_instances=sizes.get(ds, 0))))  # type: ignore[arg-type]
    return out


def _count_lines(path: pathlib.Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f.read().split(b"\n") if line.strip())


def build_reasoning_rows(data: pathlib.Path) -> list[CatalogueRow]:
    """Chain-of-thought rows (Reasoning benchmark), BBH rows and superni_extra's non-SuperNI tasks."""
    out = []
    for _, (short, source) in COT_DATASETS.items():
        tsv = data / "flan_cot" / f"{short}_train.tsv"
        out.append(CatalogueRow(TaskInfo(
            name=COT_PREFIX + short, benchmark="Reasoning", category="Reasoning",
            source_dataset=normalize_source(source), instruction_level="task", metric="rouge_l",
            num_instances=_count_lines(tsv) if tsv.is_file() else 0)))
    bbh_dir = data / "bbh" / "bbh"
    for path in sorted(bbh_dir.glob("*.json")) if bbh_dir.is_dir() else []:
        try:
            n = len(json.loads(path.read_text(encoding="utf-8"))["examples"])
        except (json.JSONDecodeError, KeyError) as e:
            raise CatalogueError(f"{path}: cannot count examples ({e})") from None
        out.append(CatalogueRow(TaskInfo(
            name=BBH_PREFIX + path.stem, benchmark="BBH", category="Reasoning",
            source_dataset="bbh", instruction_level="task", metric="exact_match",
            num_instances=n), source_split="eval_only"))
    meta = data / "superni_extra" / "tasks_extra.jsonl"
    if meta.is_file():
        for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("official_NI_task", True):
                continue  # real SuperNI tasks are rows of all_tasks_catalog.tsv already
            name = rec["name"]
            if "_bbh_" in name:
                bench, source, metric = "BBH", "bbh", "exact_match"
            else:
                source = normalize_source(name.split("_", 1)[1])
                bench = "Reasoning"
                # Table 15 scores GSM8K and StrategyQA (rationale + answer) with Rouge-L.
                metric = "rouge_l" if source in ("gsm8k", "strategyqa") else "exact_match"
            out.append(CatalogueRow(TaskInfo(
                name=name, benchmark=bench, category="Reasoning", source_dataset=source,
                instruction_level="task", metric=metric,  # type: ignore[arg-type]
                num_instances=int(rec.get("num_instances_in_source_file") or 0)),
                source_split="eval_only"))
    return out


def build_catalogue(data_dir: str | os.PathLike) -> list[CatalogueRow]:
    """Build every catalogue row from the fact files of a data directory.

    ``split_role`` is filled with the role under the paper's split ("optiml", see splits.py).
    """
    data = pathlib.Path(data_dir)
    if not (data / "superni").is_dir():
        raise FileNotFoundError(f"--data_dir {data}: no superni/ folder (see the README's "
                                "\"Real data\" section for the expected layout)")
    rows = (build_superni_rows(data) + build_flan_rows(data) + build_ps_rows(data)
            + build_reasoning_rows(data))
    names: set[str] = set()
    for r in rows:
        if r.info.name in names:
            raise CatalogueError(f"two catalogue rows are named {r.info.name!r}")
        names.add(r.info.name)
    infos = {r.info.name: r.info for r in rows}
    resolved = splits.resolve(splits.get_split("optiml"), infos,
                              source_splits={r.info.name: r.source_split for r in rows})
    return [dataclasses.replace(r, info=dataclasses.replace(r.info, split_role=resolved.roles[r.info.name]))
            for r in rows]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--build`` regenerates tasks/catalogue.tsv; ``--summary`` prints counts."""
    p = argparse.ArgumentParser(prog="python -m optiml_jax.tasks.catalogue_builder", description=main.__doc__)
    p.add_argument("--build", action="store_true", help="regenerate the table from --data_dir")
    p.add_argument("--data_dir", default=None, help=f"data directory (default: ${DATA_DIR_ENV})")
    p.add_argument("--output", default=str(CATALOGUE_PATH), help="where to write the table")
    p.add_argument("--summary", action="store_true", help="print counts per benchmark and role")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.build:
        d = resolve_data_dir(args.data_dir)
        if d is None:
            p.error(f"--build needs --data_dir or ${DATA_DIR_ENV}")
        rows = build_catalogue(d)
        write_table(rows, args.output)
        log.info("wrote %d tasks to %s", len(rows), args.output)
        table_rows: Iterable[CatalogueRow] = rows
    else:
        table_rows = read_table(args.output)
    if args.summary or not args.build:
        counts: dict[tuple[str, str], int] = {}
        for r in table_rows:
            key = (r.info.benchmark, r.info.split_role)
            counts[key] = counts.get(key, 0) + 1
        for (bench, role), n in sorted(counts.items()):
            print(f"{bench:14s} {role:18s} {n:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
