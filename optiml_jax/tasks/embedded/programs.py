"""Embedded families of Program Execution (lists, strings), Linguistic Probing (counting) and Mathematics."""
from __future__ import annotations

from optiml_jax.tasks.embedded.core import (
    NAMES,
    WORDS,
    Instance,
    fmt_list,
    random_numbers,
    register_family,
)

# --------------------------------------------------------------------------------------------
# Program Execution (lists and strings)
# --------------------------------------------------------------------------------------------
LIST_TEMPLATES = ("Input: [{x}]", "List: {x}", "Numbers: {x}\nAnswer:")
STR_TEMPLATES = ("Input: {x}", "Text: {x}", "Word: {x}\nOutput:")


@register_family("sort_ascending", "ni", "Program Execution",
                 "Sort the given list of numbers from smallest to largest. Answer with the sorted numbers "
                 "separated by commas.", LIST_TEMPLATES, metric="rouge_l")
def _sort_asc(rng):
    xs = random_numbers(rng)
    return Instance({"x": fmt_list(xs)}, fmt_list(sorted(xs)))


@register_family("sort_descending", "ni", "Program Execution",
                 "Sort the given list of numbers from largest to smallest, separated by commas.", LIST_TEMPLATES,
                 metric="rouge_l")
def _sort_desc(rng):
    xs = random_numbers(rng)
    return Instance({"x": fmt_list(xs)}, fmt_list(sorted(xs, reverse=True)))


@register_family("reverse_list", "ni", "Program Execution",
                 "Write the given list of numbers in reverse order, separated by commas.", LIST_TEMPLATES,
                 metric="rouge_l")
def _reverse_list(rng):
    xs = random_numbers(rng)
    return Instance({"x": fmt_list(xs)}, fmt_list(xs[::-1]))


@register_family("dedup_list", "ni", "Program Execution",
                 "Remove repeated numbers from the list, keeping the first occurrence of each number and "
                 "the original order.", LIST_TEMPLATES, metric="rouge_l")
def _dedup(rng):
    base = random_numbers(rng, 3, 5, 20)
    xs = base + [rng.choice(base) for _ in range(rng.randint(1, 3))]
    rng.shuffle(xs)
    seen: list[int] = []
    for x in xs:
        if x not in seen:
            seen.append(x)
    return Instance({"x": fmt_list(xs)}, fmt_list(seen))


@register_family("list_max", "ni", "Program Execution",
                 "Find the largest number in the given list.", LIST_TEMPLATES)
def _list_max(rng):
    xs = random_numbers(rng)
    return Instance({"x": fmt_list(xs)}, str(max(xs)))


@register_family("list_min", "ni", "Program Execution",
                 "Find the smallest number in the given list.", LIST_TEMPLATES)
def _list_min(rng):
    xs = random_numbers(rng)
    return Instance({"x": fmt_list(xs)}, str(min(xs)))


@register_family("list_sum", "ni", "Program Execution",
                 "Add up all the numbers in the given list and give the total.", LIST_TEMPLATES)
def _list_sum(rng):
    xs = random_numbers(rng, 2, 5, 30)
    return Instance({"x": fmt_list(xs)}, str(sum(xs)))


@register_family("list_length", "ni", "Program Execution",
                 "Count how many numbers the given list contains.", LIST_TEMPLATES)
def _list_len(rng):
    xs = random_numbers(rng, 1, 12)
    return Instance({"x": fmt_list(xs)}, str(len(xs)))


@register_family("filter_even", "ni", "Program Execution",
                 "Keep only the even numbers of the list, in their original order. If there are none, "
                 "answer 'none'.", LIST_TEMPLATES, metric="rouge_l")
def _filter_even(rng):
    xs = random_numbers(rng)
    ev = [x for x in xs if x % 2 == 0]
    return Instance({"x": fmt_list(xs)}, fmt_list(ev) if ev else "none")


@register_family("last_element", "ni", "Program Execution",
                 "Give the last element of the given list.", LIST_TEMPLATES)
def _last(rng):
    xs = random_numbers(rng)
    return Instance({"x": fmt_list(xs)}, str(xs[-1]))


@register_family("uppercase", "ni", "Program Execution",
                 "Rewrite the given words in capital letters.", STR_TEMPLATES)
def _upper(rng):
    ws = rng.sample(WORDS, rng.randint(1, 3))
    return Instance({"x": " ".join(ws)}, " ".join(ws).upper())


@register_family("reverse_string", "ni", "Program Execution",
                 "Write the characters of the given word in reverse order.", STR_TEMPLATES)
def _rev_str(rng):
    w = rng.choice(WORDS) + rng.choice(("", "s", "er", "ing")) + str(rng.randint(0, 9))
    return Instance({"x": w}, w[::-1])


@register_family("remove_vowels", "ni", "Program Execution",
                 "Delete every vowel (a, e, i, o, u) from the given words and write what remains.",
                 STR_TEMPLATES)
def _no_vowels(rng):
    ws = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
    return Instance({"x": ws}, "".join(c for c in ws if c not in "aeiou"))


@register_family("reverse_words", "ps", "Program Execution", "Reverse the order of words.",
                 ("Reverse the order of the words in this sentence: {x}",
                  "{x}\nWrite the words above in the opposite order.",
                  "Here is a sentence: \"{x}\". What is it with its words backwards?"), metric="rouge_l")
def _rev_words(rng):
    ws = rng.sample(WORDS, rng.randint(2, 5))
    return Instance({"x": " ".join(ws)}, " ".join(ws[::-1]))


@register_family("first_element", "ps", "Program Execution", "Give the first element of a list.",
                 ("What is the first number in the list {x}?", "List: {x}\nWhich number comes first?",
                  "Tell me the first item of [{x}]."))
def _first(rng):
    xs = random_numbers(rng)
    return Instance({"x": fmt_list(xs)}, str(xs[0]))


# --------------------------------------------------------------------------------------------
# Linguistic Probing (counting)
# --------------------------------------------------------------------------------------------
@register_family("count_letter", "ps", "Linguistic Probing", "Count a letter in a word.",
                 ("How many times does the letter '{c}' appear in the word '{w}'?",
                  "Word: {w}\nCount the letter {c}.",
                  "Count the occurrences of '{c}' in \"{w}\"."))
def _count_letter(rng):
    w = rng.choice(WORDS) + rng.choice(WORDS)
    c = rng.choice(w) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return Instance({"w": w, "c": c}, str(w.count(c)))


@register_family("count_words", "ni", "Linguistic Probing",
                 "Count the number of words in the given sentence.", STR_TEMPLATES[:2] + ("Sentence: {x}",))
def _count_words(rng):
    ws = [rng.choice(NAMES)] + rng.sample(WORDS, rng.randint(1, 8))
    return Instance({"x": " ".join(ws)}, str(len(ws)))


# --------------------------------------------------------------------------------------------
# Mathematics
# --------------------------------------------------------------------------------------------
PAIR_TEMPLATES = ("{a} and {b}", "a = {a}, b = {b}", "Numbers: {a}, {b}\nResult:")


@register_family("add", "ni", "Mathematics", "Add the two given numbers.", PAIR_TEMPLATES)
def _add(rng):
    a, b = rng.randint(0, 500), rng.randint(0, 500)
    return Instance({"a": a, "b": b}, str(a + b))


@register_family("subtract", "ni", "Mathematics",
                 "Subtract the second number from the first number.", PAIR_TEMPLATES)
def _sub(rng):
    a, b = rng.randint(0, 500), rng.randint(0, 500)
    return Instance({"a": a, "b": b}, str(a - b))


@register_family("multiply", "ni", "Mathematics", "Multiply the two given numbers.", PAIR_TEMPLATES)
def _mul(rng):
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    return Instance({"a": a, "b": b}, str(a * b))


@register_family("parity", "ni", "Mathematics",
                 "Decide whether the given number is even or odd. Answer 'even' or 'odd'.",
                 ("Number: {a}", "{a}", "Input: {a}\nAnswer:"), labels=("even", "odd"))
def _parity(rng):
    a = rng.randint(0, 9999)
    return Instance({"a": a}, "even" if a % 2 == 0 else "odd")


@register_family("next_in_sequence", "ni", "Mathematics",
                 "The numbers form an arithmetic sequence. Give the next number.", LIST_TEMPLATES)
def _next_seq(rng):
    start, step, n = rng.randint(0, 60), rng.randint(1, 12), rng.randint(3, 5)
    xs = [start + i * step for i in range(n)]
    return Instance({"x": fmt_list(xs)}, str(start + n * step))


@register_family("compare_numbers", "ps", "Mathematics", "Pick the larger number.",
                 ("Which is larger, A: {a} or B: {b}? Answer A or B.",
                  "A = {a}\nB = {b}\nWhich one is bigger (A or B)?",
                  "Compare {a} (A) and {b} (B). Which is greater?"), labels=("A", "B"))
def _compare(rng):
    a, b = rng.sample(range(1000), 2)
    return Instance({"a": a, "b": b}, "A" if a > b else "B")


