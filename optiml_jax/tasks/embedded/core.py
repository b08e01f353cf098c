"""The embedded suite's building blocks: `Family`, `Instance`, the family registry and the shared word lists."""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

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


def register_family(name: str, style: str, category: str, definition: str, templates: tuple[str, ...],
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
ANTONYM = {a: b for a, b in ANTONYMS} | {b: a for a, b in ANTONYMS}
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


def random_numbers(rng: random.Random, lo: int = 3, hi: int = 7, top: int = 99) -> list[int]:
    """Between ``lo`` and ``hi`` numbers drawn from 0..``top``."""
    return [rng.randint(0, top) for _ in range(rng.randint(lo, hi))]


def fmt_list(xs) -> str:
    """``1, 2, 3``: how the suite writes a list."""
    return ", ".join(str(x) for x in xs)




def third_person(verb: str) -> str:
    """The -s form of one of `VERBS`."""
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + ("es" if verb.endswith(("sh", "ch", "s")) else "s")


def plural(noun: str) -> str:
    """The plural of one of `OBJECTS` or `PLACES` (regular English plurals)."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


SINGULAR_SUBJECTS = NAMES + ("He", "She")
PLURAL_SUBJECTS = ("They", "We", "I", "You")


def agreement_sentence(rng: random.Random, subject: str | None = None, verb: str | None = None,
                       place: str | None = None, day: str | None = None) -> tuple[str, str]:
    """A "<subject> <verb> to the <place> every <day>." sentence: (with the right verb form, with the wrong one).

    Without ``subject``, half are third person singular (a name, He, She), half plural (They, We, I, You, or
    two names).
    """
    verb = verb or rng.choice(VERBS)
    place, day = place or rng.choice(PLACES), day or rng.choice(DAYS)
    if subject is None:
        if rng.random() < 0.5:
            subject = rng.choice(SINGULAR_SUBJECTS)
        else:
            subject = rng.choice(PLURAL_SUBJECTS) if rng.random() < 0.5 else \
                f"{rng.choice(NAMES)} and {rng.choice(NAMES)}"
    singular = subject in SINGULAR_SUBJECTS
    right, wrong = (third_person(verb), verb) if singular else (verb, third_person(verb))
    pattern = "{s} {v} to the {p} every {d}."
    return (pattern.format(s=subject, v=right, p=place, d=day), pattern.format(s=subject, v=wrong, p=place, d=day))
