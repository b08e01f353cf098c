"""A procedurally generated instruction-tuning suite, written for this project (no external text).

Each *family* is one task: a definition (the task-level instruction), two or three templates,
a seeded generator of short instances (default 500) and, for classification families, the
answer options. Families come in two instruction styles so that benchmark-level mixing is
meaningful even without real data:

* benchmark ``"Embedded-NI"`` (task-level, like Super-NaturalInstructions): the definition goes to
  ``Example.definition`` and a template only lays out the instance fields;
* benchmark ``"Embedded-PS"`` (instance-level, like PromptSource): every template is a complete
  natural-language prompt and ``Example.definition`` is empty.

Categories come from the real taxonomy (catalogue.TAXONOMY), so the "embedded" split in splits.py
can hold categories out exactly as the paper's split does, and, as in the real benchmark, every held-out
category shares a skill with some training category (`optiml_jax.tasks.embedded.shared`). Instances stay short
(well under 60 tokens) so a tiny model trains on them on a CPU. The families live in
`optiml_jax.tasks.embedded` (core: registry and word lists; programs; language; shared); this module is the
public API.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import random

from optiml_jax.tasks.embedded import language, programs, shared  # importing them registers the families
from optiml_jax.tasks.embedded.core import (  # noqa: F401  (re-exported)
    FAMILIES,
    FEMALE,
    MALE,
    NAMES,
    NI_PREFIX,
    PS_PREFIX,
    Family,
    Instance,
)
from optiml_jax.tasks.schema import Example, TaskInfo

# 500 leaves 50 held-out instances to each fully supervised task (heldout_instance_fraction 0.1), enough for
# an evaluation whose intervals are a few points wide, and 450 to train on.
NUM_INSTANCES = 500


def code_fingerprint() -> str:
    """A digest of the code that generates the suite (this module and the family modules): caches of its
    examples (the token cache) are stale when it changes."""
    from optiml_jax.tasks.embedded import core

    h = hashlib.sha256()
    for module in (core, programs, language, shared, inspect.getmodule(code_fingerprint)):
        h.update(inspect.getsource(module).encode("utf-8"))
    return h.hexdigest()


def _seed(task_name: str) -> int:
    return int.from_bytes(hashlib.sha256(task_name.encode("utf-8")).digest()[:8], "big")


def _render(fam: Family, inst: Instance, template: str) -> str:
    return template.format(**inst.fields)


@functools.cache
def _examples(task_name: str, num_instances: int) -> tuple[Example, ...]:
    fam = FAMILIES[task_name]
    rng = random.Random(_seed(task_name))
    out: list[Example] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < num_instances:
        attempts += 1
        if attempts > 200 * num_instances:
            raise RuntimeError(f"embedded family {task_name} cannot produce {num_instances} "
                               f"distinct instances (got {len(out)})")
        inst = fam.generate(rng)
        template = fam.templates[rng.randrange(len(fam.templates))]
        text = _render(fam, inst, template)
        if text in seen:
            continue
        seen.add(text)
        candidates = inst.candidates or fam.labels
        out.append(Example(
            id=f"{task_name}-{len(out)}", input=text, outputs=(inst.output,),
            definition=fam.definition if fam.style == "ni" else "", candidates=tuple(candidates)))
    return tuple(out)


def embedded_tasks() -> dict[str, TaskInfo]:
    """All embedded tasks by name (role under the "embedded" split filled in by the catalogue)."""
    return {name: TaskInfo(name=name, benchmark=fam.benchmark, category=fam.category,
                           source_dataset="embedded_" + fam.name,
                           instruction_level="task" if fam.style == "ni" else "instance",
                           metric=fam.metric,  # type: ignore[arg-type]
                           split_role="train", num_instances=NUM_INSTANCES)
            for name, fam in FAMILIES.items()}


def embedded_examples(name: str, num_instances: int = NUM_INSTANCES) -> list[Example]:
    """The deterministic instances of embedded task ``name`` (same list on every call/machine)."""
    if name not in FAMILIES:
        raise KeyError(f"unknown embedded task {name!r}; known: {len(FAMILIES)} tasks starting "
                       f"with {NI_PREFIX!r} or {PS_PREFIX!r}")
    if num_instances <= 0:
        raise ValueError(f"num_instances must be positive, got {num_instances}")
    return list(_examples(name, num_instances))


def family(name: str) -> Family:
    """The family behind embedded task ``name`` (definition, templates, labels)."""
    if name not in FAMILIES:
        raise KeyError(f"unknown embedded task {name!r}")
    return FAMILIES[name]
