"""Embedded families of the language categories: sentiment, topics, QA, word semantics, cause and effect,
grammar, entailment, coreference, dialogue acts, names, text matching, spelling."""
from __future__ import annotations

from optiml_jax.tasks.embedded.core import (
    ANTONYM,
    CAUSE_EFFECT,
    CITIES,
    COLORS,
    DAYS,
    DIALOGUE_ACTS,
    FEMALE,
    GROUPS,
    MALE,
    NAMES,
    NEGATIVE,
    OBJECTS,
    PLACES,
    POSITIVE,
    REVIEW_THINGS,
    TEAMS,
    TOPIC_SENTENCES,
    WORD_GROUP,
    WORDS,
    Instance,
    agreement_sentence,
    plural,
    register_family,
)


# --------------------------------------------------------------------------------------------
# Sentiment Analysis, Text Categorization
# --------------------------------------------------------------------------------------------
def _review(rng) -> tuple[str, str]:
    label = rng.choice(("positive", "negative"))
    adj = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    thing = rng.choice(REVIEW_THINGS)
    pattern = rng.choice(("The {t} was {a}.", "What a {a} {t}!", "{n} said the {t} was {a}.",
                          "Honestly, the {t} on {d} was {a}.", "I found the {t} {a} overall."))
    return pattern.format(t=thing, a=adj, n=rng.choice(NAMES), d=rng.choice(DAYS)), label


@register_family("sentiment", "ps", "Sentiment Analysis", "Classify the sentiment of a sentence.",
                 ("{x}\nIs this sentence positive or negative?",
                  "Review: {x}\nDid the writer like it? Answer positive or negative.",
                  "What is the sentiment of \"{x}\"?"), labels=("negative", "positive"))
def _sentiment(rng):
    text, label = _review(rng)
    return Instance({"x": text}, label)


@register_family("review_sentiment", "ni", "Sentiment Analysis",
                 "You are given a short review. Classify its sentiment as 'positive' or 'negative'.",
                 ("Review: {x}", "{x}", "Text: {x}\nSentiment:"), labels=("negative", "positive"))
def _review_sentiment(rng):
    text, label = _review(rng)
    return Instance({"x": text}, label)


def _topic_sentence(rng) -> tuple[str, str]:
    topic = rng.choice(sorted(TOPIC_SENTENCES))
    pattern = rng.choice(TOPIC_SENTENCES[topic])
    fields = dict(team=rng.choice(TEAMS), day=rng.choice(DAYS), name=rng.choice(NAMES),
                  fruit=rng.choice(GROUPS["fruit"]), adj=rng.choice(POSITIVE),
                  city=rng.choice(CITIES))
    return pattern.format(**fields), topic


@register_family("topic", "ps", "Text Categorization", "Name the topic of a sentence.",
                 ("{x}\nWhich topic is this about: sports, food, weather or music?",
                  "Sentence: {x}\nTopic (sports, food, weather, music):",
                  "Is \"{x}\" about sports, food, weather or music?"),
                 labels=("food", "music", "sports", "weather"))
def _topic(rng):
    text, topic = _topic_sentence(rng)
    return Instance({"x": text}, topic)


@register_family("headline_topic", "ni", "Text Categorization",
                 "Classify the news sentence into one of four topics: sports, food, weather or music.",
                 ("News: {x}", "{x}", "Sentence: {x}\nTopic:"), labels=("food", "music", "sports", "weather"))
def _headline_topic(rng):
    text, topic = _topic_sentence(rng)
    return Instance({"x": text}, topic)


# --------------------------------------------------------------------------------------------
# Question Answering, Answerability
# --------------------------------------------------------------------------------------------
def _placements(rng, k: int) -> list[tuple[str, str]]:
    return list(zip(rng.sample(OBJECTS, k), [rng.choice(PLACES) for _ in range(k)]))


@register_family("fact_qa_location", "ni", "Question Answering",
                 "Read the facts and answer the question about where an object is.",
                 ("Facts: {facts}\nQuestion: {q}", "{facts} {q}", "Context: {facts}\nQ: {q}\nA:"))
def _fact_location(rng):
    pl = _placements(rng, rng.randint(2, 4))
    facts = " ".join(f"The {o} is in the {p}." for o, p in pl)
    o, p = rng.choice(pl)
    return Instance({"facts": facts, "q": f"Where is the {o}?"}, f"in the {p}")


@register_family("fact_qa_owner", "ni", "Question Answering",
                 "Read the facts and answer the question with the name of the owner.",
                 ("Facts: {facts}\nQuestion: {q}", "{facts} {q}", "Context: {facts}\nQ: {q}\nA:"))
def _fact_owner(rng):
    k = rng.randint(2, 4)
    people, objs = rng.sample(NAMES, k), rng.sample(OBJECTS, k)
    facts = " ".join(f"{n} owns a {rng.choice(COLORS)} {o}." for n, o in zip(people, objs))
    i = rng.randrange(k)
    return Instance({"facts": facts, "q": f"Who owns the {objs[i]}?"}, people[i])


@register_family("fact_qa_color", "ps", "Question Answering", "Answer a color question from facts.",
                 ("{facts} What color is the {o}?", "Read: {facts}\nQuestion: which color does the {o} have?",
                  "{facts}\nTell me the color of the {o}."))
def _fact_color(rng):
    k = rng.randint(2, 4)
    objs = rng.sample(OBJECTS, k)
    cols = [rng.choice(COLORS) for _ in objs]
    facts = " ".join(f"The {o} is {c}." for o, c in zip(objs, cols))
    i = rng.randrange(k)
    return Instance({"facts": facts, "o": objs[i]}, cols[i])


@register_family("answerable", "ni", "Answerability Classification",
                 "Decide whether the question can be answered from the facts. Answer 'yes' or 'no'.",
                 ("Facts: {facts}\nQuestion: {q}", "{facts} {q}", "Context: {facts}\nQ: {q}\nAnswerable?"),
                 labels=("no", "yes"))
def _answerable(rng):
    pl = _placements(rng, 4)
    shown = pl[:rng.randint(1, 3)]
    facts = " ".join(f"The {o} is in the {p}." for o, p in shown)
    yes = rng.random() < 0.5
    o = rng.choice(shown)[0] if yes else rng.choice(pl[len(shown):])[0]
    return Instance({"facts": facts, "q": f"Where is the {o}?"}, "yes" if yes else "no")


# --------------------------------------------------------------------------------------------
# Word Semantics, Word Analogy
# --------------------------------------------------------------------------------------------
@register_family("antonyms", "ni", "Word Semantics",
                 "For each given word write its opposite, in the same order, separated by commas.",
                 ("Words: {x}", "{x}", "Input: {x}\nOpposites:"), metric="rouge_l")
def _antonyms(rng):
    ws = rng.sample(sorted(ANTONYM), rng.randint(1, 3))
    return Instance({"x": ", ".join(ws)}, ", ".join(ANTONYM[w] for w in ws))


@register_family("word_group", "ps", "Word Semantics", "Name the group a word belongs to.",
                 ("Which group do these words belong to: {x}? Options: fruit, animal, color, tool, vehicle.",
                  "{x}\nFor each word, is it a fruit, animal, color, tool or vehicle?",
                  "Group each of the following words (fruit/animal/color/tool/vehicle): {x}"), metric="rouge_l")
def _word_group(rng):
    ws = rng.sample(sorted(WORD_GROUP), rng.randint(1, 3))
    return Instance({"x": ", ".join(ws)}, ", ".join(WORD_GROUP[w] for w in ws))


@register_family("analogy_opposites", "ni", "Word Analogy",
                 "Complete the analogy 'A : B :: C : ?'. The relation between A and B also holds between "
                 "C and the answer.",
                 ("{a} : {b} :: {c} : ?", "{a} is to {b} as {c} is to", "Analogy: {a} : {b} :: {c} :"))
def _analogy_opp(rng):
    a, c = rng.sample(sorted(ANTONYM), 2)
    return Instance({"a": a, "b": ANTONYM[a], "c": c}, ANTONYM[c])


@register_family("analogy_groups", "ps", "Word Analogy", "Complete a category analogy.",
                 ("{a} is to {ga} as {c} is to what?", "{a} : {ga} :: {c} : ?",
                  "If {a} belongs with {ga}, where does {c} belong?"))
def _analogy_groups(rng):
    a, c = rng.sample(sorted(WORD_GROUP), 2)
    return Instance({"a": a, "ga": WORD_GROUP[a], "c": c}, WORD_GROUP[c])


# --------------------------------------------------------------------------------------------
# Cause Effect Classification, Grammar Error Correction
# --------------------------------------------------------------------------------------------
@register_family("cause_effect", "ni", "Cause Effect Classification",
                 "Given a premise and two alternatives, choose the alternative that is the more plausible "
                 "cause or effect of the premise, as asked. Answer '1' or '2'.",
                 ("Premise: {p}\nWhat is the {ask}?\n(1) {o1}\n(2) {o2}", "{p} ({ask}?) (1) {o1} (2) {o2}",
                  "Situation: {p}\nFind the {ask}. 1: {o1} 2: {o2}"), labels=("1", "2"))
def _cause_effect(rng):
    i, j = rng.sample(range(len(CAUSE_EFFECT)), 2)
    ask = rng.choice(("effect", "cause"))
    cause, effect = CAUSE_EFFECT[i]
    premise, right, wrong = ((cause, effect, CAUSE_EFFECT[j][1]) if ask == "effect"
                             else (effect, cause, CAUSE_EFFECT[j][0]))
    first = rng.random() < 0.5
    o1, o2 = (right, wrong) if first else (wrong, right)
    return Instance({"p": premise.capitalize() + ".", "ask": ask, "o1": o1, "o2": o2},
                    "1" if first else "2")


@register_family("what_happened_next", "ps", "Cause Effect Classification", "Pick the effect of an event.",
                 ("{p}. What happened as a result?\nOptions:\n- {o1}\n- {o2}",
                  "Event: {p}.\nWhich is the consequence: \"{o1}\" or \"{o2}\"?",
                  "{p}, so... {o1} or {o2}?"))
def _what_next(rng):
    i, j = rng.sample(range(len(CAUSE_EFFECT)), 2)
    cause, effect = CAUSE_EFFECT[i]
    wrong = CAUSE_EFFECT[j][1]
    o1, o2 = (effect, wrong) if rng.random() < 0.5 else (wrong, effect)
    return Instance({"p": cause.capitalize(), "o1": o1, "o2": o2}, effect, candidates=(o1, o2))


@register_family("fix_agreement", "ni", "Grammar Error Correction",
                 "The sentence contains a subject-verb agreement error. Rewrite it correctly.",
                 ("Sentence: {x}", "{x}", "Incorrect: {x}\nCorrect:"))
def _fix_agreement(rng):
    right, wrong = agreement_sentence(rng)
    return Instance({"x": wrong}, right)


@register_family("fix_plural", "ps", "Grammar Error Correction", "Correct the noun after a number.",
                         ("Correct this sentence: {x}", "{x}\nRewrite the sentence without the grammar mistake.",
                          "Fix the error in \"{x}\""))
def _fix_plural(rng):
    n, k = rng.choice(NAMES), rng.choice(("two", "three", "four", "five", "six"))
    noun, place = rng.choice(OBJECTS), rng.choice(PLACES)
    pattern = "{n} found {k} {w} in the {p}."
    return Instance({"x": pattern.format(n=n, k=k, w=noun, p=place)}, pattern.format(n=n, k=k, w=plural(noun), p=place))


# --------------------------------------------------------------------------------------------
# Textual Entailment, Coreference Resolution, Dialogue Act Recognition
# --------------------------------------------------------------------------------------------
def _entailment(rng) -> tuple[str, str, str]:
    n, o, c = rng.choice(NAMES), rng.choice(OBJECTS), rng.choice(COLORS)
    p = rng.choice(PLACES)
    premise = f"{n} put a {c} {o} in the {p}."
    label = rng.choice(("entailment", "contradiction", "neutral"))
    if label == "entailment":
        hyp = rng.choice((f"There is a {o} in the {p}.", f"{n} put something in the {p}.",
                          f"The {o} in the {p} is {c}."))
    elif label == "contradiction":
        other = rng.choice([x for x in COLORS if x != c])
        hyp = rng.choice((f"The {o} that {n} put in the {p} is {other}.",
                          f"{n} put nothing in the {p}.", f"There is no {o} in the {p}."))
    else:
        hyp = rng.choice((f"{n} bought the {o} on {rng.choice(DAYS)}.",
                          f"The {o} belongs to {rng.choice([x for x in NAMES if x != n])}.",
                          f"{n} likes the color {c}."))
    return premise, hyp, label


@register_family("entailment", "ni", "Textual Entailment",
                 "Given a premise and a hypothesis, answer 'entailment' if the hypothesis must be true, "
                 "'contradiction' if it must be false, and 'neutral' otherwise.",
                 ("Premise: {p}\nHypothesis: {h}", "{p} / {h}", "Sentence 1: {p}\nSentence 2: {h}\nRelation:"),
                 labels=("contradiction", "entailment", "neutral"))
def _entail_ni(rng):
    p, h, label = _entailment(rng)
    return Instance({"p": p, "h": h}, label)


@register_family("does_it_follow", "ps", "Textual Entailment", "Does the hypothesis follow?",
                 ("{p} Does it follow that \"{h}\"? Yes or no?",
                  "Suppose {p} Can we conclude that {h} Answer yes or no.",
                  "Given that {p} Is it true that {h}"), labels=("no", "yes"))
def _entail_ps(rng):
    p, h, label = _entailment(rng)
    # The hypothesis continues a sentence in two templates: lower-case a leading "The"/"There".
    first, rest = h.split(" ", 1)
    h = (first.lower() if first in ("The", "There") else first) + " " + rest
    return Instance({"p": p, "h": h}, "yes" if label == "entailment" else "no")


def _coref(rng) -> tuple[str, str, str, str]:
    f, m = rng.choice(FEMALE), rng.choice(MALE)
    a, b = (f, m) if rng.random() < 0.5 else (m, f)
    pron = rng.choice(("he", "she"))
    answer = m if pron == "he" else f
    pattern = rng.choice(("{a} called {b} because {p} needed help with the {o}.",
                          "{a} gave {b} the {o} after {p} asked for it.",
                          "{a} met {b} in the {pl}, where {p} was looking for a {o}.",
                          "{a} thanked {b} because {p} had found the {o}."))
    sent = pattern.format(a=a, b=b, p=pron, o=rng.choice(OBJECTS), pl=rng.choice(PLACES))
    return sent, pron, answer, " ".join((a, b))


@register_family("pronoun_referent", "ni", "Coreference Resolution",
                 "Read the sentence and name the person the given pronoun refers to.",
                 ("Sentence: {s}\nPronoun: {p}", "{s} ({p} = ?)", "Text: {s}\nWho is '{p}'?"))
def _coref_ni(rng):
    s, p, ans, pair = _coref(rng)
    return Instance({"s": s, "p": p}, ans, candidates=tuple(pair.split()))


@register_family("who_is_it", "ps", "Coreference Resolution", "Resolve a pronoun.",
                 ("{s} Who does \"{p}\" refer to?", "In the sentence \"{s}\", who is {p}?",
                  "{s}\nQuestion: the word '{p}' means which person?"))
def _coref_ps(rng):
    s, p, ans, pair = _coref(rng)
    return Instance({"s": s, "p": p}, ans, candidates=tuple(pair.split()))


@register_family("dialogue_act", "ni", "Dialogue Act Recognition",
                 "Classify the dialogue act of the utterance as one of: greeting, question, request, "
                 "thanks, statement.", ("Utterance: {u}", "\"{u}\"", "Speaker: {u}\nAct:"),
                 labels=("greeting", "question", "request", "statement", "thanks"))
def _dialogue_act(rng):
    act = rng.choice(sorted(DIALOGUE_ACTS))
    u = rng.choice(DIALOGUE_ACTS[act]).format(name=rng.choice(NAMES), obj=rng.choice(OBJECTS),
                                              place=rng.choice(PLACES), color=rng.choice(COLORS))
    return Instance({"u": u}, act)


# --------------------------------------------------------------------------------------------
# Named Entity Recognition, Text Matching, Spelling Error Detection
# --------------------------------------------------------------------------------------------
@register_family("extract_names", "ni", "Named Entity Recognition",
                 "List the names of the people mentioned in the sentence, in order, separated by commas.",
                 ("Sentence: {x}", "{x}", "Text: {x}\nPeople:"), metric="rouge_l")
def _names(rng):
    people = rng.sample(NAMES, rng.randint(1, 3))
    city, day = rng.choice(CITIES), rng.choice(DAYS)
    if len(people) == 1:
        x = f"{people[0]} flew to {city} on {day}."
    else:
        x = f"{', '.join(people[:-1])} and {people[-1]} visited {city} on {day}."
    return Instance({"x": x}, ", ".join(people))


@register_family("same_words", "ni", "Text Matching",
                 "Decide whether the two lists contain exactly the same words, in any order. Answer 'yes' "
                 "or 'no'.", ("List 1: {a}\nList 2: {b}", "{a} | {b}", "A: {a}\nB: {b}\nSame words?"),
                 labels=("no", "yes"))
def _same_words(rng):
    a = rng.sample(WORDS, rng.randint(3, 5))
    b = list(a)
    rng.shuffle(b)
    same = rng.random() < 0.5
    if not same:
        b[rng.randrange(len(b))] = rng.choice([w for w in WORDS if w not in a])
    return Instance({"a": " ".join(a), "b": " ".join(b)}, "yes" if same else "no")


def _misspell(rng, w: str) -> str:
    i = rng.randrange(len(w) - 1)
    op = rng.choice(("swap", "drop", "double"))
    if op == "swap" and w[i] != w[i + 1]:
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]
    if op == "drop":
        return w[:i] + w[i + 1:]
    return w[:i] + w[i] + w[i:]


@register_family("spelling", "ps", "Spelling Error Detection", "Is the word spelled correctly?",
                 ("Is the word \"{w}\" spelled correctly? Answer yes or no.",
                  "Spelling check: {w}\nCorrect spelling?", "{w} - is this a correctly spelled English word?"),
                 labels=("no", "yes"))
def _spelling(rng):
    w = rng.choice(WORDS)
    if rng.random() < 0.5:
        return Instance({"w": w}, "yes")
    m = _misspell(rng, w)
    return Instance({"w": m}, "yes" if m == w else "no")


