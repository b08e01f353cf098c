"""Embedded training families that teach what the held-out categories need, as real neighbouring categories do.

In the real benchmark a held-out category is never learned from nothing: COPA-style Cause Effect Classification
shares commonsense with Commonsense Classification and Text Completion tasks, Grammar Error Correction shares
morphology with Grammar Error Detection, Word Analogy shares lexical relations with Word Semantics, and a
multiple-choice format ("(1) ... (2) ...") recurs across dozens of categories. Each family below sits in a
category the "embedded" split trains on and draws on the same facts (the cause/effect pairs, verb agreement,
plural forms, genders of names, facts about objects, kinds of utterances) as one of the held-out categories, in another format and
with other wording, so held-out scores measure transfer of a skill, not recall of a template.
"""
from __future__ import annotations

from optiml_jax.tasks.embedded.core import (
    ANTONYM,
    CAUSE_EFFECT,
    COLORS,
    DAYS,
    DIALOGUE_ACTS,
    FEMALE,
    MALE,
    NAMES,
    OBJECTS,
    PLACES,
    VERBS,
    Instance,
    agreement_sentence,
    plural,
    register_family,
)


# --------------------------------------------------------------------------------------------
# Cause and effect knowledge (held out: Cause Effect Classification)
# --------------------------------------------------------------------------------------------
@register_family("complete_consequence", "ps", "Text Completion", "Complete a sentence with its consequence.",
                 ("Finish the sentence: {n} said that {c}, so", "{n} noticed that {c}. As a consequence,",
                  "Complete: because {c}, {n} saw that"))
def _complete_consequence(rng):
    cause, effect = rng.choice(CAUSE_EFFECT)
    return Instance({"c": cause, "n": rng.choice(NAMES)}, effect)


@register_family("give_reason", "ni", "Commonsense Classification",
                 "Read what happened and say what most plausibly caused it.",
                 ("Observation: {n} saw that {e}.", "{n} told us that {e}. Why?",
                  "What {n} noticed: {e}\nReason:"))
def _give_reason(rng):
    cause, effect = rng.choice(CAUSE_EFFECT)
    return Instance({"e": effect, "n": rng.choice(NAMES)}, cause)


# --------------------------------------------------------------------------------------------
# Numbered options (the answer format of Cause Effect Classification)
# --------------------------------------------------------------------------------------------
@register_family("pick_opposite", "ni", "Word Semantics",
                 "Choose the option that means the opposite of the given word. Answer '1' or '2'.",
                 ("Word: {w}\n(1) {o1}\n(2) {o2}", "{w}: opposite? (1) {o1} (2) {o2}",
                  "Find the opposite of {w}. 1: {o1} 2: {o2}"), labels=("1", "2"))
def _pick_opposite(rng):
    w, other = rng.sample(sorted(ANTONYM), 2)
    first = rng.random() < 0.5
    o1, o2 = (ANTONYM[w], ANTONYM[other]) if first else (ANTONYM[other], ANTONYM[w])
    return Instance({"w": w, "o1": o1, "o2": o2}, "1" if first else "2")


# --------------------------------------------------------------------------------------------
# Verb agreement and plurals (held out: Grammar Error Correction)
# --------------------------------------------------------------------------------------------
@register_family("agreement_check", "ps", "Grammar Error Detection", "Is the verb form correct?",
                 ("Is this sentence grammatical? {x} Answer yes or no.", "{x}\nDoes the verb agree with its subject?",
                  "Check the grammar of \"{x}\" (yes = correct, no = wrong)."), labels=("no", "yes"))
def _agreement_check(rng):
    right, wrong = agreement_sentence(rng)
    ok = rng.random() < 0.5
    return Instance({"x": right if ok else wrong}, "yes" if ok else "no")


@register_family("change_subject", "ni", "Sentence Perturbation",
                 "Rewrite the sentence with the new subject, changing the verb form where needed.",
                 ("Sentence: {x}\nNew subject: {s}", "{x} (subject: {s})", "Text: {x}\nReplace the subject with {s}:"))
def _change_subject(rng):
    verb, place, day = rng.choice(VERBS), rng.choice(PLACES), rng.choice(DAYS)
    subjects = rng.sample(("He", "She", "They", "We", "I", "You") + NAMES[:6], 2)
    forms = [agreement_sentence(rng, subject=s, verb=verb, place=place, day=day)[0] for s in subjects]
    return Instance({"x": forms[0], "s": subjects[1]}, forms[1])


@register_family("plural_form", "ni", "Linguistic Probing",
                 "Write the plural form of each given noun, in the same order, separated by commas.",
                 ("Nouns: {x}", "{x}", "Words: {x}\nPlurals:"), metric="rouge_l")
def _plural_form(rng):
    ws = rng.sample(OBJECTS + PLACES, rng.randint(1, 3))
    return Instance({"x": ", ".join(ws)}, ", ".join(plural(w) for w in ws))


# --------------------------------------------------------------------------------------------
# Genders of names and facts about objects (held out: Coreference Resolution, Textual Entailment)
# --------------------------------------------------------------------------------------------
@register_family("name_gender", "ps", "Gender Classification", "Is the person a man or a woman?",
                 ("{n} went to the {p}. Is {n} a man or a woman?", "Name: {n} (seen in the {p})\nGender (man/woman):",
                  "{n} is in the {p}. Would you call {n} he or she? Answer man or woman."), labels=("man", "woman"))
def _name_gender(rng):
    n = rng.choice(NAMES)
    return Instance({"n": n, "p": rng.choice(PLACES)}, "woman" if n in FEMALE else "man")


@register_family("claim_check", "ni", "Fact Verification",
                 "Decide whether the claim agrees with the note. Answer 'true' or 'false'.",
                 ("Note: {p}\nClaim: {h}", "{p} Claim: {h}", "Note: {p}\nIs it true that {h}"),
                 labels=("false", "true"))
def _claim_check(rng):
    n, o, p = rng.choice(MALE + FEMALE), rng.choice(OBJECTS), rng.choice(PLACES)
    c, other = rng.sample(COLORS, 2)
    true = rng.random() < 0.5
    claim = f"the {o} is {c}." if true else f"the {o} is {other}."
    return Instance({"p": f"{n} left a {c} {o} in the {p}.", "h": claim}, "true" if true else "false")


# --------------------------------------------------------------------------------------------
# Replies that depend on the kind of utterance (held out: Dialogue Act Recognition)
# --------------------------------------------------------------------------------------------
REPLIES = {"greeting": "Hello, nice to see you too.", "question": "Let me check and tell you.",
           "request": "Sure, I will do it.", "statement": "I see, thank you for telling me.",
           "thanks": "You are welcome."}


@register_family("polite_reply", "ps", "Dialogue Generation", "Reply to an utterance.",
                 ("{u}\nWhat is a polite reply?", "Someone says: \"{u}\" Write a short answer.",
                  "Utterance: {u}\nReply:"))
def _polite_reply(rng):
    act = rng.choice(sorted(DIALOGUE_ACTS))
    u = rng.choice(DIALOGUE_ACTS[act]).format(name=rng.choice(NAMES), obj=rng.choice(OBJECTS),
                                              place=rng.choice(PLACES), color=rng.choice(COLORS))
    return Instance({"u": u}, REPLIES[act])


# Held-out category of the "embedded" split -> the training families that carry its skill (the tests check that
# the split trains on them and holds the category out).
SHARED_SKILLS: dict[str, tuple[str, ...]] = {
    "Cause Effect Classification": ("embedded_ps_complete_consequence", "embedded_ni_give_reason",
                                    "embedded_ni_pick_opposite"),
    "Grammar Error Correction": ("embedded_ps_agreement_check", "embedded_ni_change_subject",
                                 "embedded_ni_plural_form"),
    "Word Analogy": ("embedded_ni_antonyms", "embedded_ps_word_group", "embedded_ni_pick_opposite"),
    "Coreference Resolution": ("embedded_ps_name_gender",),
    "Textual Entailment": ("embedded_ni_claim_check", "embedded_ps_fact_qa_color"),
    "Dialogue Act Recognition": ("embedded_ps_polite_reply",),
}
