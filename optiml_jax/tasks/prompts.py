"""Prompt construction (paper section 2.4, 4.5-4.8): raw `Example`s -> bipartite `PromptedExample`s.

Every prompt is an *instruction* (what the model conditions on) and an *output* (the loss target).

- A delimiter joins them unless the instruction already ends with ":"; it is drawn per example from
  `DELIMITERS` (the paper's footnote 5 set) to avoid overfitting one format.
- Task-level instructions (SuperNI style): ``definition, demonstrations, example``. Instance-level
  instructions (FLAN / PromptSource: the template is already inside ``example.input``): ``demonstrations,
  example``. Demonstrations reuse the example's delimiter and are joined by ``separator``.
- The target is the first reference, preceded by one space (the delimiters end with ":"), so a candidate's
  score at evaluation is the log-likelihood of exactly the string trained on: candidates are returned in
  the same target form; `references` keep the raw strings for metrics.
- Reasoning (CoT) tasks: the instruction asks for step-by-step reasoning and the target is the rationale
  followed by "The answer is <answer>." Pre-training style tasks: empty source, the whole text is the target.
- BIG-Bench Hard (`render_bbh`): the 3-shot layout of BBH's own prompt files, with or without chain of thought;
  `bbh_extract_answer` / `bbh_exact_match` read the answer back (paper Table 14: exact match).

All functions are pure: randomness comes from a caller-provided ``numpy.random.Generator``.
"""
from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np

from optiml_jax.tasks.schema import (PART_DEFINITION, PART_DEMONSTRATION, PART_FIXED, PART_INPUT, Example,
                                     PromptedExample, TaskInfo)

DELIMITERS: tuple[str, ...] = (
    "\nAnswer:", " Answer:", "\nA:", " A:", "\nOutput:", " Output:", "\nanswer:", "\noutput:",
)
EVAL_SEPARATOR = "\n\n"           # between demonstrations at evaluation (paper Table 20)
DEFINITION_SEPARATOR = "\n\n"     # after a task-level definition
METAICL_SEPARATOR = "\n\n\n"      # MetaICL training (section 4.8)
COT_INSTRUCTION = "Answer the following question by reasoning step by step."
REASONING_BENCHMARK = "Reasoning"
PRETRAINING_BENCHMARK = "Pretraining"
EVAL_SHOTS: tuple[int, ...] = (0, 2, 5)


def format_target(text: str) -> str:
    """The loss target for a reference: one leading space after the delimiter's colon, no outer blanks."""
    return " " + text.strip()


def is_reasoning(task: TaskInfo) -> bool:
    """True for chain-of-thought tasks (their targets carry the rationale)."""
    return task.benchmark == REASONING_BENCHMARK


def is_pretraining(task: TaskInfo) -> bool:
    """True for pre-training style tasks (no source; the whole text is the target)."""
    return task.benchmark == PRETRAINING_BENCHMARK


def answer_text(task: TaskInfo, example: Example) -> str:
    """What the model must produce for ``example``: the first reference, with the rationale for CoT tasks."""
    if not example.outputs:
        raise ValueError(f"task {task.name!r}, example {example.id!r}: no outputs")
    answer = example.outputs[0].strip()
    if is_reasoning(task) and example.rationale.strip():
        # Rationale first, then the answer in a fixed phrase the evaluator can parse (paper Table 6).
        return f"{example.rationale.strip()} The answer is {answer.rstrip('.')}."
    return answer


def _instruction_body(task: TaskInfo, example: Example) -> str:
    if is_reasoning(task):
        return f"{COT_INSTRUCTION}\n{example.input.strip()}"
    return example.input.strip()


def _join_delimiter(instruction: str, delimiter: str) -> str:
    instruction = instruction.rstrip()
    return instruction if instruction.endswith(":") else instruction + delimiter


def _demonstration(task: TaskInfo, demo: Example, delimiter: str) -> str:
    return _join_delimiter(_instruction_body(task, demo), delimiter) + format_target(answer_text(task, demo))


def render(
    task: TaskInfo,
    example: Example,
    *,
    num_shots: int = 0,
    demos: Sequence[Example] = (),
    rng: np.random.Generator | None = None,
    delimiter: str | None = None,
    separator: str = EVAL_SEPARATOR,
) -> PromptedExample:
    """Renders one example into its (source, target) form.

    Args:
      task: the example's task (instruction level, benchmark).
      example: the raw example.
      num_shots: number of demonstrations to use; ``demos`` must hold at least that many.
      demos: candidate demonstrations (the first ``num_shots`` are used; ``example`` itself is refused).
      rng: draws the delimiter when ``delimiter`` is None (required then).
      delimiter: force one delimiter (evaluation reproducibility, tests).
      separator: between demonstrations and before the example.
    """
    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0, got {num_shots}")
    if len(demos) < num_shots:
        raise ValueError(f"task {task.name!r}: {num_shots} shots requested but only {len(demos)} demos given")
    used = list(demos[:num_shots])
    if any(d.id == example.id for d in used):
        raise ValueError(f"task {task.name!r}: example {example.id!r} cannot be its own demonstration")
    references = tuple(o.strip() for o in example.outputs)
    if is_pretraining(task):
        # Whole-sequence LM loss on pre-training text (section 4.5): nothing to condition on.
        text = example.input + (example.outputs[0] if example.outputs else "")
        return PromptedExample(task=task.name, id=example.id, source="", target=text, references=(text,),
                               num_shots=0, benchmark=task.benchmark)
    if delimiter is None:
        if rng is None:
            raise ValueError("render: pass rng (to draw a delimiter) or an explicit delimiter")
        delimiter = DELIMITERS[int(rng.integers(len(DELIMITERS)))]
    shots = [_demonstration(task, d, delimiter) for d in used]
    body = _instruction_body(task, example).rstrip()
    query = _join_delimiter(body, delimiter)
    # Pieces in source order; each joiner (separator, delimiter) opens the next piece, so every piece boundary
    # is a whitespace character after a non-whitespace one (see schema.PromptedExample.parts).
    definition = example.definition.strip() if task.instruction_level == "task" else ""
    parts: list[tuple[str, str]] = []
    if definition:
        # Demonstrations go between the task definition and the example (task-level instructions); the
        # definition is always followed by one blank line so 0-shot training and evaluation prompts agree.
        parts.append((PART_DEFINITION, definition))
    joiners = ([DEFINITION_SEPARATOR] if definition else [""]) + [separator] * len(shots)
    for joiner, shot in zip(joiners, shots):
        parts.append((PART_DEMONSTRATION, joiner + shot))
    parts.append((PART_INPUT, joiners[len(shots)] + body))
    if query != body:
        parts.append((PART_FIXED, query[len(body):]))
    source = "".join(text for _, text in parts)
    return PromptedExample(
        task=task.name, id=example.id, source=source, target=format_target(answer_text(task, example)),
        references=references, candidates=tuple(format_target(c) for c in example.candidates),
        num_shots=num_shots, benchmark=task.benchmark, parts=tuple(parts))


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from arbitrary values, stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFFFFFFFFFF


def choose_demos(
    pool: Sequence[Example], exclude_id: str, k: int, *, seed: int,
) -> list[Example]:
    """Deterministically picks ``k`` demonstrations from ``pool`` (never ``exclude_id``).

    The choice depends only on (pool ids, excluded id, k, seed), so evaluation prompts are reproducible.
    Returns fewer than ``k`` only when the pool is too small.
    """
    if k <= 0:
        return []
    candidates = [e for e in pool if e.id != exclude_id]
    if not candidates:
        return []
    rng = np.random.Generator(np.random.PCG64(stable_seed(seed, exclude_id, k, len(candidates))))
    idx = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
    return [candidates[int(i)] for i in idx]


def render_eval(
    task: TaskInfo,
    example: Example,
    train_pool: Sequence[Example],
    *,
    num_shots: int = 0,
    seed: int = 0,
) -> PromptedExample:
    """k-shot evaluation prompt: demonstrations from the task's training instances, delimiter fixed per
    example by ``seed`` (so 0-shot and 5-shot prompts of one example share it)."""
    demos = choose_demos(train_pool, example.id, num_shots, seed=seed)
    rng = np.random.Generator(np.random.PCG64(stable_seed("delimiter", seed, task.name, example.id)))
    return render(task, example, num_shots=len(demos), demos=demos, rng=rng, separator=EVAL_SEPARATOR)


def train_delimiter_index(key: int) -> int:
    """Delimiter of a training draw, a pure function of its key (lets callers cache by it)."""
    return int(key) % len(DELIMITERS)


def render_train(
    task: TaskInfo,
    example: Example,
    pool: Sequence[Example],
    *,
    key: int,
    num_shots: int = 0,
    separator: str = METAICL_SEPARATOR,
) -> PromptedExample:
    """Training prompt of one draw: delimiter and (MetaICL) demonstrations are pure functions of ``key``."""
    delimiter = DELIMITERS[train_delimiter_index(key)]
    demos: list[Example] = []
    if num_shots > 0 and len(pool) > 1:
        rng = np.random.Generator(np.random.PCG64(int(key) & 0x7FFFFFFFFFFFFFFF))
        # A permutation prefix gives distinct positions; one extra covers the example itself.
        for i in rng.permutation(len(pool))[:num_shots + 1]:
            cand = pool[int(i)]
            if cand.id != example.id and len(demos) < num_shots:
                demos.append(cand)
    return render(task, example, num_shots=len(demos), demos=demos, delimiter=delimiter, separator=separator)


# ----------------------------------------------------------------------------------------------------------------
# BIG-Bench Hard (Suzgun et al. 2022; OPT-IML Table 14): 3-shot prompts with and without chain of thought, scored
# by exact match on the generated answer.

BBH_COT_TRIGGER = "Let's think step by step."
BBH_ANSWER_MARKER = "So the answer is"
# mode -> whether the demonstrations carry their chain of thought.
BBH_MODES: dict[str, bool] = {"answer_only": False, "cot": True}
_BBH_NEXT_QUESTION = re.compile(r"\n\s*Q:")
_BBH_ANSWER_IS = re.compile(r"the answer is\s*", re.IGNORECASE)
_BBH_OPTION = re.compile(r"\([A-Za-z]\)")


def render_bbh(task: TaskInfo, example: Example, demos: Sequence[Example], *, mode: str) -> PromptedExample:
    """The BBH prompt of one example: task description, the demonstrations as ``Q: ...\\nA: ...`` blocks, then
    ``Q: <input>\\nA:``; in "cot" mode each demonstration answers with its rationale and "So the answer is X."
    and the query ends with "A: Let's think step by step." (the layout of BBH's cot-prompts files).

    ``demos`` are the task's own prompt demonstrations (`sources.load_demonstrations`), never its test items.
    """
    if mode not in BBH_MODES:
        raise ValueError(f"BBH mode must be one of {sorted(BBH_MODES)}, got {mode!r}")
    if not example.outputs:
        raise ValueError(f"task {task.name!r}, example {example.id!r}: no outputs")
    cot = BBH_MODES[mode]
    blocks: list[str] = []
    description = example.definition.strip() or next((d.definition.strip() for d in demos if d.definition), "")
    if description:
        blocks.append(description)
    for d in demos:
        if d.id == example.id:
            raise ValueError(f"task {task.name!r}: example {example.id!r} cannot be its own demonstration")
        answer = d.outputs[0].strip()
        if cot:
            rationale = d.rationale.strip()
            if not rationale:
                raise ValueError(f"task {task.name!r}: demonstration {d.id!r} has no rationale for the 'cot' mode")
            if not rationale.startswith(BBH_COT_TRIGGER):
                rationale = f"{BBH_COT_TRIGGER} {rationale}"
            answer = f"{rationale} {BBH_ANSWER_MARKER} {answer.rstrip('.')}."
        blocks.append(f"Q: {d.input.strip()}\nA: {answer}")
    blocks.append(f"Q: {example.input.strip()}\nA:" + (f" {BBH_COT_TRIGGER}" if cot else ""))
    return PromptedExample(
        task=task.name, id=example.id, source="\n\n".join(blocks), target=format_target(example.outputs[0]),
        references=tuple(o.strip() for o in example.outputs), num_shots=len(demos), benchmark=task.benchmark)


def bbh_extract_answer(generation: str, *, mode: str) -> str | None:
    """The answer in a BBH generation: cut where the model starts a new "Q:", then (cot) the text after the last
    "the answer is" (case-insensitive; None when the phrase is missing), first line only, without a final
    period."""
    if mode not in BBH_MODES:
        raise ValueError(f"BBH mode must be one of {sorted(BBH_MODES)}, got {mode!r}")
    text = _BBH_NEXT_QUESTION.split(generation, 1)[0]
    if BBH_MODES[mode]:
        hits = list(_BBH_ANSWER_IS.finditer(text))
        if not hits:
            return None
        text = text[hits[-1].end():]
    lines = text.strip().splitlines()
    return lines[0].strip().rstrip(".").strip() if lines else ""


def _bbh_normalize(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).lower()


def bbh_exact_match(answer: str | None, references: Sequence[str]) -> float:
    """100.0 when the extracted answer equals a reference (case and whitespace aside), else 0.0.

    Punctuation is kept (Dyck-language answers are all brackets). A reference that is an option letter "(X)"
    also matches an answer that starts with "(X)" and goes on with the option's text.
    """
    if answer is None:
        return 0.0
    pred = _bbh_normalize(answer)
    for ref in references:
        want = _bbh_normalize(ref)
        if pred == want:
            return 100.0
        if _BBH_OPTION.fullmatch(want) and pred[:3] == want and _BBH_OPTION.match(pred):
            return 100.0
    return 0.0
