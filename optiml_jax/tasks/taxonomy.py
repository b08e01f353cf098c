"""The unified task taxonomy and the label-mapping tables, read once from the package data file ``taxonomy.yaml``.

The taxonomy is Super-NaturalInstructions' 76 categories plus a few extra ones; the tables map every other
benchmark's category labels (``CATEGORY_MAP``) and datasets (``FLAN_DATASETS``, ``PS_DATASETS``, ``COT_DATASETS``)
onto it, and list the reviewed source-dataset aliases. The YAML file's comments give each table's sources.
`parse_tables` checks the file on import, so a malformed edit fails loudly and names the entry.
`optiml_jax.tasks.catalogue` re-exports every constant here; callers use it.
"""
from __future__ import annotations

import importlib.resources
import re
import typing

import yaml

from optiml_jax.tasks import schema

class CatalogueError(ValueError):
    """A catalogue table (the task TSV, the taxonomy file) or a fact file behind it is malformed; the message names
    file and field. Defined here, the lowest module that raises it; `optiml_jax.tasks.catalogue` re-exports it."""


TABLES_FILE = "taxonomy.yaml"
# Each table of TABLES_FILE: "list" (of unique names) or "map" (name -> value), and how many strings a value
# holds (1: a string, n > 1: a list of n strings, read as a tuple).
_TABLE_SHAPES: dict[str, tuple[str, int]] = {
    "superni_categories": ("list", 1), "extra_categories": ("list", 1), "category_map": ("map", 1),
    "superni_exact_match_categories": ("list", 1), "flan_datasets": ("map", 2), "ps_datasets": ("map", 3),
    "cot_datasets": ("map", 2), "source_aliases": ("map", 1),
}
# The metrics a table may name (schema.Metric).
METRICS: tuple[str, ...] = typing.get_args(schema.Metric)
# The form `catalogue.normalize_source` gives a name before it looks up an alias: an alias key in any other
# form never matches.
_NORMALIZED_SOURCE = re.compile(r"[0-9a-z]+(_[0-9a-z]+)*")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping key given twice is an error (PyYAML keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise CatalogueError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _table_value(value: object, width: int, where: str) -> str | tuple[str, ...]:
    items = value if width > 1 and isinstance(value, list) and len(value) == width else [value]
    if (width > 1 and items is not value) or not all(isinstance(v, str) and v.strip() for v in items):
        kind = "a non-empty string" if width == 1 else f"a list of {width} non-empty strings"
        raise CatalogueError(f"{where}: expected {kind}, got {value!r}")
    return value if width == 1 else tuple(items)  # type: ignore[return-value]


def parse_tables(text: str, where: str = TABLES_FILE) -> dict[str, tuple | dict]:
    """Parse and check the taxonomy/mapping tables (the YAML of `TABLES_FILE`); errors name file, table and entry.

    Lists come back as tuples, maps as dicts of strings or tuples. Checked: every table present and no other,
    no name listed or keyed twice, the taxonomy's two parts disjoint, every category a table names in the
    taxonomy (exact-match categories: in SuperNI's), every metric one of `METRICS`, alias keys in normalized form.
    """
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: plain data only
    except CatalogueError as e:
        raise CatalogueError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise CatalogueError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or doc.keys() != _TABLE_SHAPES.keys():
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise CatalogueError(f"{where}: expected exactly the tables {sorted(_TABLE_SHAPES)}, got {got}")
    tables: dict[str, tuple | dict] = {}
    for name, (kind, width) in _TABLE_SHAPES.items():
        raw = doc[name]
        if kind == "list":
            if not isinstance(raw, list):
                raise CatalogueError(f"{where}: table {name!r} must be a list")
            values = tuple(_table_value(v, width, f"{where}: {name}[{i}]") for i, v in enumerate(raw))
            dups = sorted({v for v in values if values.count(v) > 1})
            if dups:
                raise CatalogueError(f"{where}: table {name!r} lists {dups} more than once")
            tables[name] = values
        else:
            if not isinstance(raw, dict) or not all(isinstance(k, str) and k.strip() for k in raw):
                raise CatalogueError(f"{where}: table {name!r} must map non-empty names to values")
            tables[name] = {k: _table_value(v, width, f"{where}: {name}[{k!r}]") for k, v in raw.items()}
    superni = set(tables["superni_categories"])
    taxonomy = superni | set(tables["extra_categories"])
    problems = [f"extra_categories[{c!r}] is a SuperNI category" for c in tables["extra_categories"] if c in superni]
    problems += [f"superni_exact_match_categories[{c!r}] is not a SuperNI category"
                 for c in tables["superni_exact_match_categories"] if c not in superni]
    problems += [f"category_map[{k!r}] = {c!r} is not in the taxonomy"
                 for k, c in tables["category_map"].items() if c not in taxonomy]
    for name in ("flan_datasets", "ps_datasets"):
        for k, (category, *_, metric) in tables[name].items():
            if category not in taxonomy:
                problems.append(f"{name}[{k!r}]: category {category!r} is not in the taxonomy")
            if metric not in METRICS:
                problems.append(f"{name}[{k!r}]: metric {metric!r} is not one of {METRICS}")
    problems += [f"source_aliases key {k!r} is not a normalized source name (lower case, digits, '_')"
                 for k in tables["source_aliases"] if not _NORMALIZED_SOURCE.fullmatch(k)]
    if problems:
        raise CatalogueError(f"{where}: " + "; ".join(problems))
    return tables


def _load_tables() -> dict[str, tuple | dict]:
    # importlib.resources: the file is package data, found the same way in a checkout and in an installed wheel.
    resource = importlib.resources.files(__package__).joinpath(TABLES_FILE)
    return parse_tables(resource.read_text(encoding="utf-8"), where=str(resource))


_TABLES = _load_tables()
# Super-NaturalInstructions' 76 categories, then the few other benchmarks' categories without a counterpart.
SUPERNI_CATEGORIES: tuple[str, ...] = _TABLES["superni_categories"]  # type: ignore[assignment]
EXTRA_CATEGORIES: tuple[str, ...] = _TABLES["extra_categories"]  # type: ignore[assignment]
TAXONOMY: tuple[str, ...] = SUPERNI_CATEGORIES + EXTRA_CATEGORIES
# Other benchmarks' category labels -> unified category.
CATEGORY_MAP: dict[str, str] = _TABLES["category_map"]  # type: ignore[assignment]
# SuperNI categories that also report exact match (`catalogue.secondary_metrics`).
SUPERNI_EXACT_MATCH_CATEGORIES: frozenset[str] = frozenset(_TABLES["superni_exact_match_categories"])
# FLAN dataset -> (category, metric); PromptSource dataset -> (category, source dataset, metric);
# chain-of-thought CSV dataset name -> (short name, source dataset).
FLAN_DATASETS: dict[str, tuple[str, str]] = _TABLES["flan_datasets"]  # type: ignore[assignment]
PS_DATASETS: dict[str, tuple[str, str, str]] = _TABLES["ps_datasets"]  # type: ignore[assignment]
COT_DATASETS: dict[str, tuple[str, str]] = _TABLES["cot_datasets"]  # type: ignore[assignment]
# Normalized source-dataset spelling -> the canonical one (`catalogue.normalize_source`).
SOURCE_ALIASES: dict[str, str] = _TABLES["source_aliases"]  # type: ignore[assignment]
