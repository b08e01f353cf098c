"""Prompt construction: delimiters, demonstration placement, k-shot, CoT, pre-training style, MetaICL."""
import collections

import numpy as np
import pytest

from optiml_jax.tasks import prompts
from optiml_jax.tasks.schema import Example, TaskInfo

NI = TaskInfo(name="ni_task", benchmark="SuperNI", category="Question Answering", instruction_level="task")
PS = TaskInfo(name="ps_task", benchmark="PromptSource", category="Sentiment Analysis", instruction_level="instance")
COT = TaskInfo(name="cot_task", benchmark="Reasoning", category="Reasoning", instruction_level="task")
PT = TaskInfo(name="pt_task", benchmark="Pretraining", category="Pretraining", instruction_level="instance")

DEF = "In this task you add two numbers."


def _ex(i, definition=DEF):
    return Example(id=f"e{i}", input=f"{i} + {i}", outputs=(str(2 * i), f"{2 * i}.0"), definition=definition)


def test_delimiter_set_is_the_papers():
    assert prompts.DELIMITERS == ("\nAnswer:", " Answer:", "\nA:", " A:", "\nOutput:", " Output:",
                                  "\nanswer:", "\noutput:")


def test_zero_shot_task_level():
    p = prompts.render(NI, _ex(3), delimiter="\nOutput:")
    assert p.source == f"{DEF}\n\n3 + 3\nOutput:"
    assert p.target == " 6"
    assert p.references == ("6", "6.0")
    assert (p.task, p.id, p.num_shots, p.benchmark) == ("ni_task", "e3", 0, "SuperNI")


def test_no_delimiter_when_instruction_ends_with_colon():
    ex = Example(id="x", input="Translate to French: cat\nFrench:", outputs=("chat",))
    p = prompts.render(PS, ex, rng=np.random.default_rng(0))
    assert p.source == "Translate to French: cat\nFrench:" and p.target == " chat"


def test_delimiter_is_sampled_per_example_from_the_set():
    rng = np.random.default_rng(0)
    seen = collections.Counter()
    for i in range(400):
        src = prompts.render(NI, _ex(i), rng=rng).source
        seen[next(d for d in prompts.DELIMITERS if src.endswith(d))] += 1
    assert set(seen) == set(prompts.DELIMITERS)
    assert min(seen.values()) > 20
    with pytest.raises(ValueError, match="rng"):
        prompts.render(NI, _ex(1))


def test_demonstrations_after_definition_for_task_level():
    demos = [_ex(1), _ex(2)]
    p = prompts.render(NI, _ex(3), num_shots=2, demos=demos, delimiter=" A:")
    assert p.source == f"{DEF}\n\n1 + 1 A: 2\n\n2 + 2 A: 4\n\n3 + 3 A:"
    assert p.num_shots == 2


def test_demonstrations_before_example_for_instance_level():
    exs = [Example(id=f"p{i}", input=f"Review: good {i}. Sentiment?", outputs=("positive",),
                   candidates=("positive", "negative")) for i in range(3)]
    p = prompts.render(PS, exs[2], num_shots=2, demos=exs[:2], delimiter="\nanswer:")
    assert p.source.startswith("Review: good 0. Sentiment?\nanswer: positive\n\nReview: good 1.")
    assert p.source.endswith("Review: good 2. Sentiment?\nanswer:")
    assert p.candidates == (" positive", " negative")


def test_example_never_its_own_demo_and_enough_demos_required():
    with pytest.raises(ValueError, match="own demonstration"):
        prompts.render(NI, _ex(1), num_shots=1, demos=[_ex(1)], delimiter=" A:")
    with pytest.raises(ValueError, match="2 shots requested"):
        prompts.render(NI, _ex(1), num_shots=2, demos=[_ex(2)], delimiter=" A:")


def test_eval_kshot_deterministic_and_excludes_evaluated_instance():
    pool = [_ex(i) for i in range(20)]
    for k in prompts.EVAL_SHOTS:
        for target in pool[:5]:
            a = prompts.render_eval(NI, target, pool, num_shots=k, seed=3)
            b = prompts.render_eval(NI, target, pool, num_shots=k, seed=3)
            assert a == b and a.num_shots == k
            demo_inputs = [e.input for e in pool if f"\n\n{e.input}" in a.source and e.id != target.id]
            assert len(demo_inputs) == k
    # 0- and 5-shot prompts of one example share the delimiter.
    z = prompts.render_eval(NI, pool[0], pool, num_shots=0, seed=1)
    f = prompts.render_eval(NI, pool[0], pool, num_shots=5, seed=1)
    assert z.source.split("\n\n")[-1] == f.source.split("\n\n")[-1]
    # A different seed gives different demonstrations.
    assert prompts.choose_demos(pool, "e0", 5, seed=1) != prompts.choose_demos(pool, "e0", 5, seed=2)


def test_reasoning_target_is_rationale_then_answer():
    ex = Example(id="c", input="Is the sky green?", outputs=("no",), rationale="The sky is blue, not green.")
    p = prompts.render(COT, ex, delimiter=" Output:")
    assert p.source.startswith(prompts.COT_INSTRUCTION)
    assert p.target == " The sky is blue, not green. The answer is no."
    assert p.references == ("no",)


def test_pretraining_style_has_empty_source():
    ex = Example(id="t", input="", outputs=("Some document text that is all target.",))
    p = prompts.render(PT, ex)
    assert p.source == "" and p.target == "Some document text that is all target."


def test_render_train_metaicl_separator_and_purity():
    pool = [_ex(i) for i in range(10)]
    a = prompts.render_train(NI, pool[0], pool, key=12345, num_shots=3)
    b = prompts.render_train(NI, pool[0], pool, key=12345, num_shots=3)
    assert a == b and a.num_shots == 3
    assert a.source.count(prompts.METAICL_SEPARATOR) == 3  # d1|d2|d3|example
    assert a.source.startswith(DEF + "\n\n") and not a.source.startswith(DEF + "\n\n\n")
    assert "0 + 0" in a.source.split(prompts.METAICL_SEPARATOR)[-1]
    zero = prompts.render_train(NI, pool[0], pool, key=12345)
    assert zero.num_shots == 0 and zero.source.count("\n\n\n") == 0
