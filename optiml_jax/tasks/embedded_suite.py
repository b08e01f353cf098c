"""A procedurally generated instruction-tuning suite, written for this project (no external text).

Each *family* is one task: a definition (the task-level instruction), two or three templates,
a seeded generator of short instances (default 300) and, for classification families, the
answer options. Families come in two instruction styles so that benchmark-level mixing is
meaningful even without real data:

* benchmark ``"Embedded-NI"`` (task-level, like Super-NaturalInstructions): the definition goes to
  ``Example.definition`` and a template only lays out the instance fields;
* benchmark ``"Embedded-PS"`` (instance-level, like PromptSource): every template is a complete
  natural-language prompt and ``Example.definition`` is empty.

Categories come from the real taxonomy (catalogue.TAXONOMY), so the "embedded" split in splits.py
can hold categories out exactly as the paper's split does. Instances stay short (well under 60
GPT-2 tokens) so a tiny model trains on them on a CPU.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from typing import Callable

from optiml_jax.tasks.schema import Example, TaskInfo

NUM_INSTANCES = 300
NI_PREFIX = "embedded_ni_"
PS_PREFIX = "embedded_ps_"


@dataclasses.dataclass(frozen=True)
class Instance:
    """What a family generator returns: template fields, the answer, optional per-instance options."""

    fields: dict
    output: str
    candidates: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Family:
    """One generated task. ``labels`` is the fixed answer set of a classification family."""

    name: str
    style: str                       # "ni" (task-level) or "ps" (instance-level)
    category: str
    definition: str
    templates: tuple[str, ...]
    generate: Callable[[random.Random], Instance]
    labels: tuple[str, ...] = ()
    metric: str = "rouge_l"

    @property
    def task_name(self) -> str:
        return (NI_PREFIX if self.style == "ni" else PS_PREFIX) + self.name

    @property
    def benchmark(self) -> str:
        return "Embedded-NI" if self.style == "ni" else "Embedded-PS"


FAMILIES: dict[str, Family] = {}


def _family(name: str, style: str, category: str, definition: str, templates: tuple[str, ...],
            labels: tuple[str, ...] = (), metric: str | None = None):
    """Register a generator function as a family."""
    def wrap(fn: Callable[[random.Random], Instance]) -> Callable[[random.Random], Instance]:
        fam = Family(name=name, style=style, category=category, definition=definition,
                     templates=templates, generate=fn, labels=labels,
                     metric=metric or ("accuracy" if labels else "exact_match"))
        if fam.task_name in FAMILIES:
            raise ValueError(f"duplicate embedded family {fam.task_name}")
        FAMILIES[fam.task_name] = fam
        return fn
    return wrap


# --------------------------------------------------------------------------------------------
# Word lists (ours)
# --------------------------------------------------------------------------------------------
FEMALE = ("Anna", "Maria", "Sara", "Lucy", "Emma", "Nina", "Olivia", "Grace", "Julia", "Helen")
MALE = ("Tom", "David", "Peter", "Jack", "Sam", "Leo", "Oscar", "Henry", "Paul", "Victor")
NAMES = FEMALE + MALE
OBJECTS = ("book", "key", "ball", "cup", "hat", "phone", "lamp", "box", "pen", "coin", "bag",
           "clock", "map", "shoe", "ring", "kite")
PLACES = ("kitchen", "garden", "garage", "office", "bedroom", "library", "attic", "basement",
          "hallway", "classroom")
CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Rome", "Dublin", "Quito", "Seoul", "Lagos")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
VERBS = ("walk", "run", "drive", "travel", "ride", "cycle", "hurry", "swim")
ANTONYMS = (("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"),
            ("light", "dark"), ("old", "young"), ("high", "low"), ("early", "late"),
            ("open", "closed"), ("full", "empty"), ("hard", "soft"), ("strong", "weak"),
            ("long", "short"), ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"),
            ("clean", "dirty"), ("thick", "thin"), ("cheap", "expensive"), ("first", "last"),
            ("inside", "outside"), ("up", "down"), ("left", "right"), ("true", "false"))
GROUPS = {"fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"),
          "animal": ("dog", "cat", "horse", "tiger", "rabbit", "sheep", "wolf", "zebra"),
          "color": ("red", "blue", "green", "yellow", "purple", "orange", "brown", "pink"),
          "tool": ("hammer", "saw", "drill", "wrench", "shovel", "rake", "chisel", "pliers"),
          "vehicle": ("car", "bus", "train", "bicycle", "truck", "boat", "plane", "tram")}
WORD_GROUP = {w: g for g, ws in GROUPS.items() for w in ws}
WORDS = tuple(sorted({w for ws in GROUPS.values() for w in ws} | set(OBJECTS)))
POSITIVE = ("wonderful", "delicious", "great", "lovely", "excellent", "amazing", "pleasant",
            "fantastic", "charming", "superb")
NEGATIVE = ("terrible", "awful", "boring", "horrible", "disappointing", "bland", "dreadful",
            "poor", "unpleasant", "mediocre")
REVIEW_THINGS = ("movie", "meal", "hotel", "concert", "book", "game", "service", "trip",
                 "show", "cafe")
TOPIC_SENTENCES = {
    "sports": ("The {team} won the final match on {day}.", "{name} scored two goals for the {team}.",
               "The {team} lost the game after extra time.", "{name} trains with the {team} every {day}."),
    "food": ("{name} cooked a {adj} soup with {fruit}.", "The bakery sells fresh {fruit} pies.",
             "{name} ate {fruit} salad for lunch on {day}.", "We baked a cake with {fruit} and cream."),
    "weather": ("Heavy rain is expected in {city} on {day}.", "It was sunny and warm in {city} today.",
                "Strong winds hit {city} on {day} night.", "Snow fell all morning in {city}."),
    "music": ("{name} played the guitar at a concert in {city}.", "The band released a new song on {day}.",
              "{name} sang in the choir on {day}.", "The orchestra performed in {city} last night."),
}
TEAMS = ("Lions", "Hawks", "Rovers", "Comets", "Tigers", "Falcons", "Sharks", "Wolves")
CAUSE_EFFECT = (
    ("it rained all night", "the streets were wet"), ("the glass fell off the table", "the glass broke"),
    ("she forgot her umbrella", "she got wet in the rain"), ("he skipped breakfast", "he was hungry by noon"),
    ("the ice was left in the sun", "the ice melted"), ("the alarm did not ring", "he woke up late"),
    ("the battery died", "the phone turned off"), ("she studied every evening", "she passed the exam"),
    ("the plant got no water", "the plant dried out"), ("the oven was too hot", "the bread burned"),
    ("he ran ten kilometres", "he felt tired"), ("the road was icy", "the car slid"),
    ("the store had a sale", "many people came to shop"), ("the power went out", "the room went dark"),
    ("the dog saw a cat", "the dog started barking"), ("she watered the seeds", "the seeds sprouted"),
    ("the baby was sleepy", "the baby fell asleep"), ("the tire had a nail in it", "the tire went flat"),
    ("he told a funny joke", "everyone laughed"), ("the kettle boiled", "the kettle whistled"),
)
DIALOGUE_ACTS = {
    "greeting": ("Hello {name}, nice to see you.", "Good morning, {name}!", "Hi {name}, how are you today?",
                 "Hey {name}, welcome back."),
    "question": ("Where did you put the {obj}?", "When does the {obj} shop open?", "{name}, is the {obj} yours?",
                 "What color is the {obj}?"),
    "request": ("Could you pass me the {obj}, please?", "Please bring the {obj} to the {place}.",
                "{name}, can you fix the {obj} for me?", "Would you lend me your {obj}?"),
    "thanks": ("Thank you for the {obj}, {name}.", "Thanks a lot for your help with the {obj}.",
               "I really appreciate the {obj}, {name}.", "Many thanks for finding my {obj}."),
    "statement": ("I left the {obj} in the {place}.", "The {obj} is on the table.",
                  "{name} bought a new {obj} yesterday.", "My {obj} is {color}."),
}


def _nums(rng: random.Random, lo: int = 3, hi: int = 7, top: int = 99) -> list[int]:
    return [rng.randint(0, top) for _ in range(rng.randint(lo, hi))]


def _fmt(xs) -> str:
    return ", ".join(str(x) for x in xs)


# --------------------------------------------------------------------------------------------
# Program Execution (lists and strings)
# --------------------------------------------------------------------------------------------
LIST_TEMPLATES = ("Input: [{x}]", "List: {x}", "Numbers: {x}\nAnswer:")
STR_TEMPLATES = ("Input: {x}", "Text: {x}", "Word: {x}\nOutput:")


@_family("sort_ascending", "ni", "Program Execution",
         "Sort the given list of numbers from smallest to largest. Answer with the sorted numbers "
         "separated by commas.", LIST_TEMPLATES)
def _sort_asc(rng):
    xs = _nums(rng)
    return Instance({"x": _fmt(xs)}, _fmt(sorted(xs)))


@_family("sort_descending", "ni", "Program Execution",
         "Sort the given list of numbers from largest to smallest, separated by commas.", LIST_TEMPLATES)
def _sort_desc(rng):
    xs = _nums(rng)
    return Instance({"x": _fmt(xs)}, _fmt(sorted(xs, reverse=True)))


@_family("reverse_list", "ni", "Program Execution",
         "Write the given list of numbers in reverse order, separated by commas.", LIST_TEMPLATES)
def _reverse_list(rng):
    xs = _nums(rng)
    return Instance({"x": _fmt(xs)}, _fmt(xs[::-1]))


@_family("dedup_list", "ni", "Program Execution",
         "Remove repeated numbers from the list, keeping the first occurrence of each number and "
         "the original order.", LIST_TEMPLATES)
def _dedup(rng):
    base = _nums(rng, 3, 5, 20)
    xs = base + [rng.choice(base) for _ in range(rng.randint(1, 3))]
    rng.shuffle(xs)
    seen: list[int] = []
    for x in xs:
        if x not in seen:
            seen.append(x)
    return Instance({"x": _fmt(xs)}, _fmt(seen))


@_family("list_max", "ni", "Program Execution",
         "Find the largest number in the given list.", LIST_TEMPLATES)
def _list_max(rng):
    xs = _nums(rng)
    return Instance({"x": _fmt(xs)}, str(max(xs)))


@_family("list_min", "ni", "Program Execution",
         "Find the smallest number in the given list.", LIST_TEMPLATES)
def _list_min(rng):
    xs = _nums(rng)
    return Instance({"x": _fmt(xs)}, str(min(xs)))


@_family("list_sum", "ni", "Program Execution",
         "Add up all the numbers in the given list and give the total.", LIST_TEMPLATES)
def _list_sum(rng):
    xs = _nums(rng, 2, 5, 30)
    return Instance({"x": _fmt(xs)}, str(sum(xs)))


@_family("list_length", "ni", "Program Execution",
         "Count how many numbers the given list contains.", LIST_TEMPLATES)
def _list_len(rng):
    xs = _nums(rng, 1, 12)
    return Instance({"x": _fmt(xs)}, str(len(xs)))


@_family("filter_even", "ni", "Program Execution",
         "Keep only the even numbers of the list, in their original order. If there are none, "
         "answer 'none'.", LIST_TEMPLATES)
def _filter_even(rng):
    xs = _nums(rng)
    ev = [x for x in xs if x % 2 == 0]
    return Instance({"x": _fmt(xs)}, _fmt(ev) if ev else "none")


@_family("last_element", "ni", "Program Execution",
         "Give the last element of the given list.", LIST_TEMPLATES)
def _last(rng):
    xs = _nums(rng)
    return Instance({"x": _fmt(xs)}, str(xs[-1]))


@_family("uppercase", "ni", "Program Execution",
         "Rewrite the given words in capital letters.", STR_TEMPLATES)
def _upper(rng):
    ws = rng.sample(WORDS, rng.randint(1, 3))
    return Instance({"x": " ".join(ws)}, " ".join(ws).upper())


@_family("reverse_string", "ni", "Program Execution",
         "Write the characters of the given word in reverse order.", STR_TEMPLATES)
def _rev_str(rng):
    w = rng.choice(WORDS) + rng.choice(("", "s", "er", "ing")) + str(rng.randint(0, 9))
    return Instance({"x": w}, w[::-1])


@_family("remove_vowels", "ni", "Program Execution",
         "Delete every vowel (a, e, i, o, u) from the given words and write what remains.",
         STR_TEMPLATES)
def _no_vowels(rng):
    ws = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
    return Instance({"x": ws}, "".join(c for c in ws if c not in "aeiou"))


@_family("reverse_words", "ps", "Program Execution", "Reverse the order of words.",
         ("Reverse the order of the words in this sentence: {x}",
          "{x}\nWrite the words above in the opposite order.",
          "Here is a sentence: \"{x}\". What is it with its words backwards?"))
def _rev_words(rng):
    ws = rng.sample(WORDS, rng.randint(2, 5))
    return Instance({"x": " ".join(ws)}, " ".join(ws[::-1]))


@_family("first_element", "ps", "Program Execution", "Give the first element of a list.",
         ("What is the first number in the list {x}?", "List: {x}\nWhich number comes first?",
          "Tell me the first item of [{x}]."))
def _first(rng):
    xs = _nums(rng)
    return Instance({"x": _fmt(xs)}, str(xs[0]))


# --------------------------------------------------------------------------------------------
# Linguistic Probing (counting)
# --------------------------------------------------------------------------------------------
@_family("count_letter", "ps", "Linguistic Probing", "Count a letter in a word.",
         ("How many times does the letter '{c}' appear in the word '{w}'?",
          "Word: {w}\nCount the letter {c}.",
          "Count the occurrences of '{c}' in \"{w}\"."))
def _count_letter(rng):
    w = rng.choice(WORDS) + rng.choice(WORDS)
    c = rng.choice(w) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return Instance({"w": w, "c": c}, str(w.count(c)))


@_family("count_words", "ni", "Linguistic Probing",
         "Count the number of words in the given sentence.", STR_TEMPLATES[:2] + ("Sentence: {x}",))
def _count_words(rng):
    ws = [rng.choice(NAMES)] + rng.sample(WORDS, rng.randint(1, 8))
    return Instance({"x": " ".join(ws)}, str(len(ws)))


# --------------------------------------------------------------------------------------------
# Mathematics
# --------------------------------------------------------------------------------------------
PAIR_TEMPLATES = ("{a} and {b}", "a = {a}, b = {b}", "Numbers: {a}, {b}\nResult:")


@_family("add", "ni", "Mathematics", "Add the two given numbers.", PAIR_TEMPLATES)
def _add(rng):
    a, b = rng.randint(0, 500), rng.randint(0, 500)
    return Instance({"a": a, "b": b}, str(a + b))


@_family("subtract", "ni", "Mathematics",
         "Subtract the second number from the first number.", PAIR_TEMPLATES)
def _sub(rng):
    a, b = rng.randint(0, 500), rng.randint(0, 500)
    return Instance({"a": a, "b": b}, str(a - b))


@_family("multiply", "ni", "Mathematics", "Multiply the two given numbers.", PAIR_TEMPLATES)
def _mul(rng):
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    return Instance({"a": a, "b": b}, str(a * b))


@_family("parity", "ni", "Mathematics",
         "Decide whether the given number is even or odd. Answer 'even' or 'odd'.",
         ("Number: {a}", "{a}", "Input: {a}\nAnswer:"), labels=("even", "odd"))
def _parity(rng):
    a = rng.randint(0, 9999)
    return Instance({"a": a}, "even" if a % 2 == 0 else "odd")


@_family("next_in_sequence", "ni", "Mathematics",
         "The numbers form an arithmetic sequence. Give the next number.", LIST_TEMPLATES)
def _next_seq(rng):
    start, step, n = rng.randint(0, 60), rng.randint(1, 12), rng.randint(3, 5)
    xs = [start + i * step for i in range(n)]
    return Instance({"x": _fmt(xs)}, str(start + n * step))


@_family("compare_numbers", "ps", "Mathematics", "Pick the larger number.",
         ("Which is larger, A: {a} or B: {b}? Answer A or B.",
          "A = {a}\nB = {b}\nWhich one is bigger (A or B)?",
          "Compare {a} (A) and {b} (B). Which is greater?"), labels=("A", "B"))
def _compare(rng):
    a, b = rng.sample(range(1000), 2)
    return Instance({"a": a, "b": b}, "A" if a > b else "B")


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


@_family("sentiment", "ps", "Sentiment Analysis", "Classify the sentiment of a sentence.",
         ("{x}\nIs this sentence positive or negative?",
          "Review: {x}\nDid the writer like it? Answer positive or negative.",
          "What is the sentiment of \"{x}\"?"), labels=("negative", "positive"))
def _sentiment(rng):
    text, label = _review(rng)
    return Instance({"x": text}, label)


@_family("review_sentiment", "ni", "Sentiment Analysis",
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


@_family("topic", "ps", "Text Categorization", "Name the topic of a sentence.",
         ("{x}\nWhich topic is this about: sports, food, weather or music?",
          "Sentence: {x}\nTopic (sports, food, weather, music):",
          "Is \"{x}\" about sports, food, weather or music?"),
         labels=("food", "music", "sports", "weather"))
def _topic(rng):
    text, topic = _topic_sentence(rng)
    return Instance({"x": text}, topic)


@_family("headline_topic", "ni", "Text Categorization",
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


@_family("fact_qa_location", "ni", "Question Answering",
         "Read the facts and answer the question about where an object is.",
         ("Facts: {facts}\nQuestion: {q}", "{facts} {q}", "Context: {facts}\nQ: {q}\nA:"))
def _fact_location(rng):
    pl = _placements(rng, rng.randint(2, 4))
    facts = " ".join(f"The {o} is in the {p}." for o, p in pl)
    o, p = rng.choice(pl)
    return Instance({"facts": facts, "q": f"Where is the {o}?"}, f"in the {p}")


@_family("fact_qa_owner", "ni", "Question Answering",
         "Read the facts and answer the question with the name of the owner.",
         ("Facts: {facts}\nQuestion: {q}", "{facts} {q}", "Context: {facts}\nQ: {q}\nA:"))
def _fact_owner(rng):
    k = rng.randint(2, 4)
    people, objs = rng.sample(NAMES, k), rng.sample(OBJECTS, k)
    facts = " ".join(f"{n} owns a {rng.choice(COLORS)} {o}." for n, o in zip(people, objs))
    i = rng.randrange(k)
    return Instance({"facts": facts, "q": f"Who owns the {objs[i]}?"}, people[i])


@_family("fact_qa_color", "ps", "Question Answering", "Answer a color question from facts.",
         ("{facts} What color is the {o}?", "Read: {facts}\nQuestion: which color does the {o} have?",
          "{facts}\nTell me the color of the {o}."))
def _fact_color(rng):
    k = rng.randint(2, 4)
    objs = rng.sample(OBJECTS, k)
    cols = [rng.choice(COLORS) for _ in objs]
    facts = " ".join(f"The {o} is {c}." for o, c in zip(objs, cols))
    i = rng.randrange(k)
    return Instance({"facts": facts, "o": objs[i]}, cols[i])


@_family("answerable", "ni", "Answerability Classification",
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
ANTONYM = {a: b for a, b in ANTONYMS} | {b: a for a, b in ANTONYMS}


@_family("antonyms", "ni", "Word Semantics",
         "For each given word write its opposite, in the same order, separated by commas.",
         ("Words: {x}", "{x}", "Input: {x}\nOpposites:"))
def _antonyms(rng):
    ws = rng.sample(sorted(ANTONYM), rng.randint(1, 3))
    return Instance({"x": ", ".join(ws)}, ", ".join(ANTONYM[w] for w in ws))


@_family("word_group", "ps", "Word Semantics", "Name the group a word belongs to.",
         ("Which group do these words belong to: {x}? Options: fruit, animal, color, tool, vehicle.",
          "{x}\nFor each word, is it a fruit, animal, color, tool or vehicle?",
          "Group each of the following words (fruit/animal/color/tool/vehicle): {x}"))
def _word_group(rng):
    ws = rng.sample(sorted(WORD_GROUP), rng.randint(1, 3))
    return Instance({"x": ", ".join(ws)}, ", ".join(WORD_GROUP[w] for w in ws))


@_family("analogy_opposites", "ni", "Word Analogy",
         "Complete the analogy 'A : B :: C : ?'. The relation between A and B also holds between "
         "C and the answer.", ("{a} : {b} :: {c} : ?", "{a} is to {b} as {c} is to", "Analogy: {a} : {b} :: {c} :"))
def _analogy_opp(rng):
    a, c = rng.sample(sorted(ANTONYM), 2)
    return Instance({"a": a, "b": ANTONYM[a], "c": c}, ANTONYM[c])


@_family("analogy_groups", "ps", "Word Analogy", "Complete a category analogy.",
         ("{a} is to {ga} as {c} is to what?", "{a} : {ga} :: {c} : ?",
          "If {a} belongs with {ga}, where does {c} belong?"))
def _analogy_groups(rng):
    a, c = rng.sample(sorted(WORD_GROUP), 2)
    return Instance({"a": a, "ga": WORD_GROUP[a], "c": c}, WORD_GROUP[c])


# --------------------------------------------------------------------------------------------
# Cause Effect Classification, Grammar Error Correction
# --------------------------------------------------------------------------------------------
@_family("cause_effect", "ni", "Cause Effect Classification",
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


@_family("what_happened_next", "ps", "Cause Effect Classification", "Pick the effect of an event.",
         ("{p}. What happened as a result?\nOptions:\n- {o1}\n- {o2}",
          "Event: {p}.\nWhich is the consequence: \"{o1}\" or \"{o2}\"?",
          "{p}, so... {o1} or {o2}?"))
def _what_next(rng):
    i, j = rng.sample(range(len(CAUSE_EFFECT)), 2)
    cause, effect = CAUSE_EFFECT[i]
    wrong = CAUSE_EFFECT[j][1]
    o1, o2 = (effect, wrong) if rng.random() < 0.5 else (wrong, effect)
    return Instance({"p": cause.capitalize(), "o1": o1, "o2": o2}, effect, candidates=(o1, o2))


@_family("fix_agreement", "ni", "Grammar Error Correction",
         "The sentence contains a subject-verb agreement error. Rewrite it correctly.",
         ("Sentence: {x}", "{x}", "Incorrect: {x}\nCorrect:"))
def _fix_agreement(rng):
    verb, place, day = rng.choice(VERBS), rng.choice(PLACES), rng.choice(DAYS)
    third = verb + ("es" if verb.endswith(("sh", "ch", "s")) else "s")
    if verb == "hurry":
        third = "hurries"
    if rng.random() < 0.5:
        subj = rng.choice(NAMES + ("He", "She"))
        wrong, right = verb, third
    else:
        subj = rng.choice(("They", "We", "I", "You")) if rng.random() < 0.5 else \
            f"{rng.choice(NAMES)} and {rng.choice(NAMES)}"
        wrong, right = third, verb
    pattern = "{s} {v} to the {p} every {d}."
    return Instance({"x": pattern.format(s=subj, v=wrong, p=place, d=day)},
                    pattern.format(s=subj, v=right, p=place, d=day))


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


@_family("entailment", "ni", "Textual Entailment",
         "Given a premise and a hypothesis, answer 'entailment' if the hypothesis must be true, "
         "'contradiction' if it must be false, and 'neutral' otherwise.",
         ("Premise: {p}\nHypothesis: {h}", "{p} / {h}", "Sentence 1: {p}\nSentence 2: {h}\nRelation:"),
         labels=("contradiction", "entailment", "neutral"))
def _entail_ni(rng):
    p, h, label = _entailment(rng)
    return Instance({"p": p, "h": h}, label)


@_family("does_it_follow", "ps", "Textual Entailment", "Does the hypothesis follow?",
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


@_family("pronoun_referent", "ni", "Coreference Resolution",
         "Read the sentence and name the person the given pronoun refers to.",
         ("Sentence: {s}\nPronoun: {p}", "{s} ({p} = ?)", "Text: {s}\nWho is '{p}'?"))
def _coref_ni(rng):
    s, p, ans, pair = _coref(rng)
    return Instance({"s": s, "p": p}, ans, candidates=tuple(pair.split()))


@_family("who_is_it", "ps", "Coreference Resolution", "Resolve a pronoun.",
         ("{s} Who does \"{p}\" refer to?", "In the sentence \"{s}\", who is {p}?",
          "{s}\nQuestion: the word '{p}' means which person?"))
def _coref_ps(rng):
    s, p, ans, pair = _coref(rng)
    return Instance({"s": s, "p": p}, ans, candidates=tuple(pair.split()))


@_family("dialogue_act", "ni", "Dialogue Act Recognition",
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
@_family("extract_names", "ni", "Named Entity Recognition",
         "List the names of the people mentioned in the sentence, in order, separated by commas.",
         ("Sentence: {x}", "{x}", "Text: {x}\nPeople:"))
def _names(rng):
    people = rng.sample(NAMES, rng.randint(1, 3))
    city, day = rng.choice(CITIES), rng.choice(DAYS)
    if len(people) == 1:
        x = f"{people[0]} flew to {city} on {day}."
    else:
        x = f"{', '.join(people[:-1])} and {people[-1]} visited {city} on {day}."
    return Instance({"x": x}, ", ".join(people))


@_family("same_words", "ni", "Text Matching",
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


@_family("spelling", "ps", "Spelling Error Detection", "Is the word spelled correctly?",
         ("Is the word \"{w}\" spelled correctly? Answer yes or no.",
          "Spelling check: {w}\nCorrect spelling?", "{w} - is this a correctly spelled English word?"),
         labels=("no", "yes"))
def _spelling(rng):
    w = rng.choice(WORDS)
    if rng.random() < 0.5:
        return Instance({"w": w}, "yes")
    m = _misspell(rng, w)
    return Instance({"w": m}, "yes" if m == w else "no")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _seed(task_name: str) -> int:
    return int.from_bytes(hashlib.sha256(task_name.encode("utf-8")).digest()[:8], "big")


def _render(fam: Family, inst: Instance, template: str) -> str:
    return template.format(**inst.fields)


@functools.lru_cache(maxsize=None)
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
