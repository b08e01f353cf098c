"""A synthetic instruction benchmark of any size, written as a data dir the real loaders read.

    python -m optiml_jax.tasks synth --tasks N --examples_per_task M --out DIR [--seed S] [--force]
    OPTIML_DATA_DIR=DIR python -m optiml_jax.train --gin_file=gin/train/tiny_cpu.gin --gin_file=DIR/synth.gin

Every task is one of the embedded suite's generator families (text written for this project, no external data)
drawn with the task's own seed, so N tasks are N distinct SuperNI task files with M instances each. DIR holds:

* ``superni/tasks/<task>.json``: the official SuperNI task-file schema (Definition, Positive Examples,
  Instances ``{id, input, output: [...]}``, Categories, ...), read by `sources.load_examples` like real tasks;
* ``jsonl/catalogue.tsv``: the tasks' catalogue rows (benchmark SuperNI), which `catalogue.load_catalogue` adds
  to the committed table for this data dir;
* ``synth.gin``: binds ``train.split = 'custom'`` and `splits.custom_split` to exactly these tasks: the real
  SuperNI tasks (all named ``task*``) and every other benchmark are out of scope, two categories are fully held
  out (one per evaluation split), a few tasks of trained categories are partially held out and a few training
  tasks give the supervised level, so every level of both evaluation splits is non-empty;
* ``SYNTH.json``: what was written (arguments, counts per role); ``--force`` replaces only a dir holding one.

Deterministic in (N, M, seed): the same arguments write byte-identical files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import random
import shutil
import time
from collections.abc import Sequence
from typing import Any

from optiml_jax.errors import UserError
from optiml_jax.tasks import catalogue, embedded_suite, splits
from optiml_jax.tasks.schema import LEVELS, TaskInfo

MANIFEST = "SYNTH.json"
GIN_FILE = "synth.gin"
SPLIT_NAME = "synth"
# One fully held-out category per evaluation split, each with two generator families (catalogue.TAXONOMY names).
VALIDATION_CATEGORY = "Cause Effect Classification"
TEST_CATEGORY = "Textual Entailment"
MIN_TASKS = 5           # train, fully held out x 2, partially held out x 2
MIN_EXAMPLES = 2
PARTIAL_EVERY = 20      # of the tasks after the first five, one in 20 is partially held out per evaluation split
SUPERVISED_EVERY = 20   # one training task in 20 also gives held-out instances (the supervised level)
HELDOUT_INSTANCE_FRACTION = 0.1
_DEDUP_ATTEMPTS = 20    # draws per wanted instance before repeats are accepted (small families run out)


class SynthError(UserError):
    """A bad argument or output dir of the synthetic benchmark writer."""


@dataclasses.dataclass(frozen=True)
class SynthTask:
    """One planned task: its name, generator family and role under the synth split."""

    name: str
    family: embedded_suite.Family
    role: str   # "train" | "validation:fully_heldout" | "test:fully_heldout" | "validation:partially_heldout" | ...


def _families() -> tuple[list[embedded_suite.Family], list[embedded_suite.Family], list[embedded_suite.Family]]:
    fams = [embedded_suite.FAMILIES[n] for n in sorted(embedded_suite.FAMILIES)]
    val = [f for f in fams if f.category == VALIDATION_CATEGORY]
    test = [f for f in fams if f.category == TEST_CATEGORY]
    train = [f for f in fams if f.category not in (VALIDATION_CATEGORY, TEST_CATEGORY)]
    return train, val, test


def plan_tasks(num_tasks: int) -> list[SynthTask]:
    """The tasks of an N-task bench (pure in N): the first five cover every evaluation level, then the
    families cycle, their held-out categories evaluated and one task in `PARTIAL_EVERY` partially held out."""
    if num_tasks < MIN_TASKS:
        raise SynthError(f"--tasks must be at least {MIN_TASKS} (a training task and the held-out levels of both "
                         f"evaluation splits), got {num_tasks}")
    train, val, test = _families()
    # Task 0 trains; tasks 3 and 4 share its category (so they are *partially* held out, not fully).
    same = [f for f in train if f.category == train[0].category and f is not train[0]]
    head = [(train[0], "train"), (val[0], "validation:fully_heldout"), (test[0], "test:fully_heldout"),
            (same[0], "validation:partially_heldout"), (same[1], "test:partially_heldout")]
    cycle = sorted(train + val + test, key=lambda f: f.task_name)
    width = max(5, len(str(num_tasks - 1)))
    out = []
    for i in range(num_tasks):
        if i < len(head):
            fam, role = head[i]
        else:
            fam = cycle[i % len(cycle)]
            if fam.category == VALIDATION_CATEGORY:
                role = "validation:fully_heldout"
            elif fam.category == TEST_CATEGORY:
                role = "test:fully_heldout"
            elif i % PARTIAL_EVERY == 0:
                role = "validation:partially_heldout"
            elif i % PARTIAL_EVERY == 1:
                role = "test:partially_heldout"
            else:
                role = "train"
        out.append(SynthTask(name=f"synth{i:0{width}d}_{fam.name}", family=fam, role=role))
    return out


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}\x00{name}".encode()).digest()[:8], "big"))


def _instances(fam: embedded_suite.Family, rng: random.Random, count: int) -> list[tuple[str, str]]:
    """``count`` (input, output) pairs, distinct while the family has enough of them."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < count:
        inst = fam.generate(rng)
        text = fam.templates[rng.randrange(len(fam.templates))].format(**inst.fields)
        attempts += 1
        if text in seen and attempts < _DEDUP_ATTEMPTS * count:
            continue
        seen.add(text)
        out.append((text, inst.output))
    return out


def task_file(task: SynthTask, num_examples: int, seed: int) -> dict[str, Any]:
    """The SuperNI task-file dict of one task (instances and two positive examples from the task's seed)."""
    fam = task.family
    rng = _rng(seed, task.name)
    pairs = _instances(fam, rng, num_examples + 2)
    demos, instances = pairs[:2], pairs[2:]
    return {
        "Contributors": ["optiml-jax synthetic benchmark"],
        "Source": [f"synthetic_{task.name}"],
        "URL": [],
        "Categories": [fam.category],
        "Reasoning": [],
        "Definition": [fam.definition],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Domains": ["Synthetic"],
        "Positive Examples": [{"input": i, "output": o, "explanation": ""} for i, o in demos],
        "Negative Examples": [],
        "Instances": [{"id": f"{task.name}-{k}", "input": i, "output": [o]} for k, (i, o) in enumerate(instances)],
        "Instance License": ["synthetic (optiml-jax)"],
    }


def task_info(task: SynthTask, num_examples: int) -> TaskInfo:
    """The catalogue row of one task."""
    fam = task.family
    role = task.role.split(":")[-1]
    return TaskInfo(name=task.name, benchmark="SuperNI", category=fam.category, source_dataset=f"synthetic_{task.name}",
                    instruction_level="task", metric=fam.metric,  # type: ignore[arg-type]
                    split_role=role, num_instances=num_examples, options=tuple(fam.labels))


def split_fields(tasks: Sequence[SynthTask], supervised: Sequence[str]) -> dict[str, Any]:
    """The `splits.custom_split` arguments of the synth split over ``tasks``."""
    def named(role: str) -> list[str]:
        return [t.name for t in tasks if t.role == role]

    return {
        "name": SPLIT_NAME, "benchmarks": ["SuperNI"], "exclude_benchmarks": [],
        "exclude_tasks": ["task*"],   # every real SuperNI task of the committed catalogue
        "validation_categories": [VALIDATION_CATEGORY], "test_categories": [TEST_CATEGORY],
        "validation_tasks": named("validation:partially_heldout"), "test_tasks": named("test:partially_heldout"),
        "validation_supervised_tasks": list(supervised), "test_supervised_tasks": list(supervised),
        "validation_supervised_fraction": 0.0, "test_supervised_fraction": 0.0,
        "heldout_instance_fraction": HELDOUT_INSTANCE_FRACTION,
    }


def _supervised(tasks: Sequence[SynthTask], files: dict[str, dict], infos: dict[str, TaskInfo]) -> list[str]:
    """One training task in `SUPERVISED_EVERY`, plus more until both evaluation splits hold out an instance."""
    train = [t.name for t in tasks if t.role == "train"]
    chosen = train[::SUPERVISED_EVERY]
    extra = iter(n for n in train if n not in chosen)
    while True:
        split = splits.Split(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in split_fields(tasks, chosen).items()})
        resolved = splits.resolve(split, infos, source_splits={})
        held = {s: sum(resolved.heldout_split_of(n, inst["id"]) == s for n in chosen
                       for inst in files[n]["Instances"]) for s in splits.EVAL_SPLITS}
        if all(held.values()):
            return chosen
        nxt = next(extra, None)
        if nxt is None:
            raise SynthError("--examples_per_task is too small for any held-out instance of a supervised task; "
                             "use at least 20")
        chosen.append(nxt)


def _gin_text(fields: dict[str, Any], args: dict[str, Any]) -> str:
    lines = [f"# The synthetic benchmark's split, written by `python -m optiml_jax.tasks synth` ({args}).",
             "# Use with the data dir it sits in:",
             ("#   OPTIML_DATA_DIR=<this dir> python -m optiml_jax.train --gin_file=gin/train/tiny_cpu.gin "
              "--gin_file=<this dir>/synth.gin"),
             "optiml_jax.train.split = 'custom'"]
    for key, value in fields.items():
        if isinstance(value, list) and len(value) > 4:
            body = "".join(f"\n    {json.dumps(v)}," for v in value)
            lines.append(f"custom_split.{key} = [{body}\n]")
        else:
            lines.append(f"custom_split.{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _prepare_out(out: pathlib.Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {str(out)!r} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise SynthError(f"--out {str(out)!r} is not empty and holds no {MANIFEST}: choose a new directory "
                             "(synth never overwrites a data dir it did not write)")
        if not force:
            raise SynthError(f"--out {str(out)!r} already holds a synthetic bench; pass --force to replace it")
        for sub in ("superni", "jsonl"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in (GIN_FILE, MANIFEST):
            (out / name).unlink(missing_ok=True)


def write_synth_bench(out: str | pathlib.Path, *, num_tasks: int, examples_per_task: int, seed: int = 0,
                      force: bool = False) -> dict[str, Any]:
    """Writes the synthetic bench into ``out`` (see the module docstring); returns the manifest."""
    if examples_per_task < MIN_EXAMPLES:
        raise SynthError(f"--examples_per_task must be at least {MIN_EXAMPLES}, got {examples_per_task}")
    t0 = time.perf_counter()
    out = pathlib.Path(out).expanduser()
    tasks = plan_tasks(num_tasks)
    _prepare_out(out, force)
    files = {t.name: task_file(t, examples_per_task, seed) for t in tasks}
    infos = {t.name: task_info(t, examples_per_task) for t in tasks}
    supervised = _supervised(tasks, files, infos)
    task_dir = out / "superni" / "tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, d in files.items():
        # No indent: json's C encoder only serves compact output (5x faster at 1,000 x 300).
        (task_dir / f"{name}.json").write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    (out / catalogue.EXTRA_CATALOGUE_RELPATH).parent.mkdir(parents=True, exist_ok=True)
    catalogue.write_table([catalogue.CatalogueRow(infos[t.name], source_split="train") for t in tasks],
                          out / catalogue.EXTRA_CATALOGUE_RELPATH)
    args = {"tasks": num_tasks, "examples_per_task": examples_per_task, "seed": seed}
    fields = split_fields(tasks, supervised)
    (out / GIN_FILE).write_text(_gin_text(fields, args), encoding="utf-8")
    roles: dict[str, int] = {}
    for t in tasks:
        roles[t.role] = roles.get(t.role, 0) + 1
    roles["validation:supervised"] = roles["test:supervised"] = len(supervised)
    manifest = {"args": args, "tasks": num_tasks, "examples": num_tasks * examples_per_task,
                "roles": dict(sorted(roles.items())), "levels": list(LEVELS),
                "categories": sorted({t.family.category for t in tasks}), "gin": GIN_FILE}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    return manifest
