"""Plain data types shared by every stage of the task pipeline.

Data flows one way: catalogue (TaskInfo) -> sources (Example) -> prompts (PromptedExample)
-> registry/mixtures -> feature converters. These types are the only contract between stages.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

Benchmark = Literal[
    "SuperNI", "PromptSource", "FLAN", "CrossFit", "ExMix", "T5", "UnifiedSKG", "Reasoning",
    "BIG-bench", "BBH", "Pretraining", "Embedded",
]
BENCHMARKS: tuple[str, ...] = Benchmark.__args__  # type: ignore[attr-defined]

Metric = Literal["accuracy", "exact_match", "rouge_l"]
InstructionLevel = Literal["task", "instance"]

# Where a task sits in a split definition (see optiml_jax/tasks/splits.py).
SplitRole = Literal[
    "train",               # used for training (its held-out instances give the "supervised" level)
    "fully_heldout",       # category never seen in training
    "partially_heldout",   # unseen task of a seen category
    "excluded",            # dropped (leakage, non-English, eval-only data that is not in a split)
]
LEVELS: tuple[str, ...] = ("fully_heldout", "partially_heldout", "supervised")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One task of the benchmark table (tasks/catalogue.tsv)."""

    name: str
    benchmark: str
    category: str                      # unified taxonomy (SuperNI's 76 categories as the base)
    source_dataset: str = ""
    instruction_level: InstructionLevel = "task"
    metric: Metric = "rouge_l"
    split_role: str = "train"
    num_instances: int = 0             # instances in the original release (may exceed what is on disk)
    # The task's fixed answer options (catalogue column "options"). Non-empty: every instance without options of
    # its own is scored by rank classification over these; empty: by generation and `metric`. A property of
    # the task, never of the instances a data sample happens to hold.
    options: tuple[str, ...] = ()

    @property
    def protocol(self) -> str:
        """"rank_classification" when the task has fixed options, else "generation" (instances may still carry
        options of their own from their file or template metadata, e.g. PromptSource ``answer_choices``)."""
        return "rank_classification" if self.options else "generation"


@dataclasses.dataclass(frozen=True)
class Example:
    """One raw instance of a task, before any prompt formatting."""

    id: str
    input: str
    outputs: tuple[str, ...]           # all references; outputs[0] is the training target
    definition: str = ""               # task-level instruction ("" for instance-level tasks)
    candidates: tuple[str, ...] = ()   # answer options => rank classification
    rationale: str = ""                # chain-of-thought, for reasoning tasks


# Roles of the pieces of a prompt's source (`PromptedExample.parts`); they tell truncation what it may cut
# (optiml_jax/feature_converters.py, `fit_segment`): a definition and fixed text (delimiter) never, a
# demonstration only whole, the instance input from its middle.
PART_DEFINITION, PART_DEMONSTRATION, PART_INPUT, PART_FIXED = "definition", "demonstration", "input", "fixed"
PART_ROLES: tuple[str, ...] = (PART_DEFINITION, PART_DEMONSTRATION, PART_INPUT, PART_FIXED)


@dataclasses.dataclass(frozen=True)
class PromptedExample:
    """An example rendered into the bipartite (instruction, output) form.

    ``parts`` are (role, text) pieces whose concatenation is ``source``; every piece after the first starts
    at a whitespace character that follows a non-whitespace one, where GPT-2-style byte-level BPE always
    splits, so encoding the pieces one by one gives exactly the tokens of the whole source. Empty when the
    prompt has no structure to protect (the whole source is then one input).
    """

    task: str
    id: str
    source: str                        # everything the model conditions on
    target: str                        # what the loss is on (training) / the first reference
    references: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    num_shots: int = 0
    benchmark: str = ""
    parts: tuple[tuple[str, str], ...] = ()
