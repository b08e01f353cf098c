"""Instruction ablations of evaluation prompts and the label-space-aware trivial baseline (pure functions).

After Kung & Peng (2023): a model evaluated with its task definition removed, or replaced by the label space
alone, shows how much of a held-out gain the instruction itself carries. Modes:

* ``"full"``: the prompt as the evaluation renders it (`optiml_jax.tasks.prompts.render_eval`);
* ``"none"``: the task-level definition removed (demonstrations and the instance stay);
* ``"labels"``: the definition replaced by the label space ("Possible answers: A, B."); a task without answer
  options has no label space and loses its definition as in ``"none"``.

Instance-level prompts (PromptSource style: the template is the instruction) carry no separate definition and
are left as they are; `changed_count` says how many prompts a mode really changed.

The trivial baseline scores what a model that knows only the label space gets: the expected accuracy of a
uniform guess among a rank-classified example's candidates, and for generated answers the task's most frequent
answer among its demonstration instances, scored with the task's metric.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence

from optiml_jax.tasks.prompts import DEFINITION_SEPARATOR
from optiml_jax.tasks.schema import PART_DEFINITION, Example, PromptedExample

MODES: tuple[str, ...] = ("full", "none", "labels")
LABEL_SPACE_PREFIX = "Possible answers: "


def check_mode(mode: str) -> str:
    """``mode`` if it is one of `MODES`, else ValueError naming them."""
    if mode not in MODES:
        raise ValueError(f"instruction mode must be one of {MODES}, got {mode!r}")
    return mode


def label_space_text(candidates: Sequence[str]) -> str:
    """"Possible answers: A, B." for the candidates (as the prompt shows them, without the target's space)."""
    return LABEL_SPACE_PREFIX + ", ".join(c.strip() for c in candidates) + "."


def ablate(example: PromptedExample, mode: str) -> PromptedExample:
    """``example`` with its instruction treated as ``mode`` says (see the module docstring)."""
    check_mode(mode)
    parts = list(example.parts)
    if mode == "full" or not parts or parts[0][0] != PART_DEFINITION:
        return example
    if mode == "labels" and example.candidates:
        parts[0] = (PART_DEFINITION, label_space_text(example.candidates))
    else:
        rest = parts[1:]
        if rest:
            # The definition's separator opens the next piece; without the definition it would lead the prompt.
            role, text = rest[0]
            rest[0] = (role, text.removeprefix(DEFINITION_SEPARATOR))
        parts = rest
    source = "".join(text for _, text in parts)
    return dataclasses.replace(example, source=source, parts=tuple(parts))


def ablate_units(examples: Mapping[str, Sequence[PromptedExample]], mode: str
                 ) -> dict[str, list[PromptedExample]]:
    """`ablate` over every unit's examples (a `optiml_jax.evaluation.render_units` result)."""
    return {k: [ablate(e, mode) for e in exs] for k, exs in examples.items()}


def changed_count(before: Mapping[str, Sequence[PromptedExample]],
                  after: Mapping[str, Sequence[PromptedExample]]) -> tuple[int, int]:
    """(prompts whose source differs, prompts in all) between two renderings of the same units."""
    pairs = [(a, b) for k in before for a, b in zip(before[k], after[k])]
    return sum(a.source != b.source for a, b in pairs), len(pairs)


def trivial_example_scores(examples: Sequence[PromptedExample], demo_pool: Sequence[Example],
                           metric: Callable[[str, Sequence[str]], float]) -> list[float]:
    """Per-example scores (0-100) of the label-space-aware trivial baseline on one unit's examples."""
    answers = collections.Counter(e.outputs[0].strip() for e in demo_pool if e.outputs)
    guess = answers.most_common(1)[0][0] if answers else ""
    out = []
    for ex in examples:
        if ex.candidates:
            # Answers compare as rank classification compares them: case and spacing aside.
            refs = {" ".join(r.lower().split()) for r in (ex.references or (ex.target,))}
            hits = sum(" ".join(c.lower().split()) in refs for c in ex.candidates)
            out.append(100.0 * hits / len(ex.candidates))
        else:
            out.append(float(metric(guess, list(ex.references) or [ex.target])))
    return out
