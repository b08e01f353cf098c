"""The procedurally generated suite: size, taxonomy, determinism, correctness, shape."""
import collections
import hashlib
import os
import re
import subprocess
import sys

import pytest

from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks import embedded_suite as es
from optiml_jax.tasks import splits
from optiml_jax.tasks.embedded import core, shared


def _digest(name):
    h = hashlib.sha256()
    for e in es.embedded_examples(name):
        h.update(repr((e.id, e.input, e.outputs, e.definition, e.candidates)).encode())
    return h.hexdigest()


def test_size_and_taxonomy():
    tasks = es.embedded_tasks()
    assert len(tasks) >= 36
    cats = collections.Counter(t.category for t in tasks.values())
    assert len(cats) >= 8 and all(c in cat.TAXONOMY for c in cats)
    benches = collections.Counter(t.benchmark for t in tasks.values())
    assert set(benches) == {"Embedded-NI", "Embedded-PS"} and min(benches.values()) >= 10
    for name, t in tasks.items():
        assert t.instruction_level == ("task" if t.benchmark == "Embedded-NI" else "instance")
        fam = es.family(name)
        assert fam.definition and 2 <= len(fam.templates) <= 3


@pytest.mark.parametrize("name", sorted(es.FAMILIES))
def test_shape(name):
    fam = es.family(name)
    exs = es.embedded_examples(name)
    assert len(exs) == es.NUM_INSTANCES
    assert len({e.id for e in exs}) == len({e.input for e in exs}) == len(exs)
    for e in exs:
        assert e.outputs and e.outputs[0].strip()
        # Short enough for a tiny CPU model: under 60 word/punctuation pieces per example.
        assert len(re.findall(r"\w+|[^\w\s]", e.input + " " + e.outputs[0])) < 60, e
        if e.candidates:
            assert e.outputs[0] in e.candidates
        assert bool(e.definition) == (fam.style == "ni")
    if fam.labels:
        seen = collections.Counter(e.outputs[0] for e in exs)
        assert set(seen) == set(fam.labels)  # every label occurs
        assert max(seen.values()) < 0.8 * len(exs)  # no degenerate majority
    used = collections.Counter(_template_of(fam.templates, e.input) for e in exs)
    assert len(used) == len(fam.templates)  # every template is used


def _template_of(templates, text):
    """Index of the most specific (longest literal text) template that renders ``text``."""
    hits = [i for i, t in enumerate(templates) if _matches(t, text)]
    assert hits, text
    return max(hits, key=lambda i: len(re.sub(r"\{\w+\}", "", templates[i])))


def _matches(template, text):
    pattern = "^" + re.sub(r"\\\{\w+\\\}", "(.+?)", re.escape(template)) + "$"
    return re.match(pattern, text, re.S) is not None


def test_answers_are_correct():
    for e in es.embedded_examples("embedded_ni_sort_ascending"):
        nums = [int(x) for x in re.findall(r"\d+", e.input)]
        assert e.outputs[0] == ", ".join(map(str, sorted(nums)))
    for e in es.embedded_examples("embedded_ni_add"):
        a, b = map(int, re.findall(r"\d+", e.input))
        assert int(e.outputs[0]) == a + b
    for e in es.embedded_examples("embedded_ni_parity"):
        assert e.outputs[0] == ("even" if int(re.findall(r"\d+", e.input)[0]) % 2 == 0 else "odd")
    for e in es.embedded_examples("embedded_ps_who_is_it"):
        pron = re.findall(r"\b(he|she)\b", e.input)[0]
        assert (e.outputs[0] in es.FEMALE) == (pron == "she")


def test_answers_of_the_shared_skill_families():
    singular = set(core.SINGULAR_SUBJECTS)

    def agrees(text):
        words = re.search(r"\b[A-Z]\w*(?: and \w+)? \w+ to the \w+ every \w+day\.", text).group(0).split(" ")
        subject = words[0] if words[1] != "and" else " ".join(words[:3])
        verb = words[1] if words[1] != "and" else words[3]
        return (verb in {core.third_person(v) for v in core.VERBS}) == (subject in singular)

    for e in es.embedded_examples("embedded_ni_fix_agreement"):
        assert not agrees(e.input) and agrees(e.outputs[0])
    for e in es.embedded_examples("embedded_ps_agreement_check"):
        assert agrees(e.input) == (e.outputs[0] == "yes")
    for e in es.embedded_examples("embedded_ni_change_subject"):
        new = re.search(r"(?:New subject: |subject: |with )(\w+)", e.input).group(1)
        assert e.outputs[0].startswith(new + " ") and agrees(e.outputs[0])
    assert [core.plural(w) for w in ("box", "library", "hallway", "key", "cup")] == [
        "boxes", "libraries", "hallways", "keys", "cups"]
    for e in es.embedded_examples("embedded_ps_fix_plural"):
        count = re.search(r"found (two|three|four|five|six) (\w+) in", e.outputs[0])
        assert count and count.group(2) == core.plural(re.search(r"found \w+ (\w+) in", e.input).group(1))
    for e in es.embedded_examples("embedded_ps_name_gender"):
        name = re.search(r"\b(" + "|".join(core.NAMES) + r")\b", e.input).group(1)
        assert e.outputs[0] == ("woman" if name in core.FEMALE else "man")
    for e in es.embedded_examples("embedded_ni_pick_opposite"):
        w = re.search(r"^(?:Word: |Find the opposite of )?(\w+)", e.input).group(1)
        options = re.findall(r"(?:\([12]\)|\b[12]:) (\w+)", e.input)
        assert options[int(e.outputs[0]) - 1] == core.ANTONYM[w]
    effects = dict(core.CAUSE_EFFECT)
    for e in es.embedded_examples("embedded_ni_give_reason"):
        assert effects[e.outputs[0]] in e.input


def test_heldout_categories_share_skills_with_training_families():
    r = splits.resolve(splits.get_split("embedded"), es.embedded_tasks(), source_splits={})
    heldout = set(splits.EMBEDDED_VALIDATION_CATEGORIES) | set(splits.EMBEDDED_TEST_CATEGORIES)
    assert set(shared.SHARED_SKILLS) == heldout
    tasks = es.embedded_tasks()
    for category, families in shared.SHARED_SKILLS.items():
        assert any(t.category == category for t in tasks.values())
        for name in families:
            assert name in r.train and tasks[name].category not in heldout, (category, name)


def test_list_answers_are_scored_by_rouge_l():
    # Partial credit for each item of a list answer, as SuperNI scores generation; one-word or one-number answers
    # and rewritten sentences (where the edit is the point) are scored by exact match.
    for name, fam in es.FAMILIES.items():
        if fam.labels:
            assert fam.metric == "accuracy", name
        elif fam.name in ("fix_agreement", "fix_plural", "change_subject"):
            assert fam.metric == "exact_match", name
        elif ", " in es.embedded_examples(name)[0].outputs[0]:
            assert fam.metric == "rouge_l", name
    assert es.FAMILIES["embedded_ni_sort_ascending"].metric == "rouge_l"
    assert es.FAMILIES["embedded_ps_reverse_words"].metric == "rouge_l"
    assert es.FAMILIES["embedded_ni_add"].metric == "exact_match"


def test_deterministic_across_calls_and_processes():
    names = ["embedded_ni_sort_ascending", "embedded_ps_sentiment", "embedded_ni_pronoun_referent"]
    here = [_digest(n) for n in names]
    es._examples.cache_clear()
    assert [_digest(n) for n in names] == here
    code = ("from tests.test_embedded_suite import _digest; "
            f"print(' '.join(_digest(n) for n in {names!r}))")
    env = dict(os.environ, PYTHONHASHSEED="12345", OPTIML_SKIP_REGISTRATION="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(cat.REPO_ROOT), check=True, timeout=120)
    assert out.stdout.split() == here


def test_errors():
    with pytest.raises(KeyError, match="unknown embedded task 'embedded_ni_nope'"):
        es.embedded_examples("embedded_ni_nope")
    with pytest.raises(ValueError, match="num_instances"):
        es.embedded_examples("embedded_ni_add", 0)
