"""Built-in training distributions, generated deterministically from a seed.

Each generator imitates the *format* of a real dataset the paper trains on (MathQA, Super-NaturalInstructions,
Chain-of-Thought) at a size a 2-core CPU can learn in minutes. Every example carries a prompt, a response (the
tokens the loss is computed on) and a multiple-choice item for the held-out lm-eval task of its distribution.
Real datasets (hub ids, local files) are read by harness/data/sources.py into the same Example type.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

NAMES = ["tom", "ann", "sam", "liz", "bob", "eva", "max", "kim", "joe", "mia"]
ITEMS = ["apples", "pens", "books", "coins", "cards", "eggs", "cups", "toys", "shells", "stamps"]
ANIMALS = ["cat", "dog", "cow", "pig", "duck", "goat", "horse", "sheep", "mouse", "frog"]
PLACES = ["shop", "park", "school", "river", "farm", "library", "market", "beach"]
COLORS = ["red", "blue", "green", "yellow", "black", "white"]
ANTONYMS = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "old": "new",
    "light": "dark", "early": "late", "open": "closed", "full": "empty", "high": "low", "hard": "soft",
}
GOOD = ["great", "kind", "fresh", "lovely", "clean", "tasty", "friendly", "perfect"]
BAD = ["awful", "rude", "stale", "dirty", "slow", "bland", "noisy", "broken"]
THINGS = ["food", "staff", "room", "service", "music", "coffee", "bread", "view"]
LETTERS = "abcde"


@dataclass(frozen=True)
class Example:
    """One training example: a prompt and the response the loss is computed on.

    Built-in examples also carry the multiple-choice item their held-out eval task asks (mc_*); examples read
    from real data leave those empty, because their evaluation is a stock lm-eval task with its own items.
    """

    prompt: str
    response: str
    mc_context: str = ""
    mc_choices: tuple[str, ...] = ()
    mc_target: int = -1  # index into mc_choices; -1 = no eval item

    @property
    def text(self) -> str:
        return self.prompt + self.response


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    report: list[Example] = field(default_factory=list)


def _distractors(rng: random.Random, correct: int, n: int, spread: int = 5, low: int = 0) -> list[int]:
    """n distinct numbers >= low near `correct` (never equal to it), so picking right needs arithmetic."""
    pool = [correct + d for d in range(-spread, spread + 1) if d != 0 and correct + d >= low]
    return rng.sample(pool, n)


def mathqa_example(rng: random.Random) -> Example:
    """MathQA format: word problem, five options `a ) … , b ) …`, rationale, correct letter."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    op = rng.choice(["+", "-", "*"])
    if op == "+":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = a + b
        problem = f"{name} has {a} {item} and gets {b} more . how many {item} does {name} have now ?"
    elif op == "-":
        b = rng.randint(1, 9)
        a = b + rng.randint(0, 9)
        c = a - b
        problem = f"{name} has {a} {item} and gives away {b} . how many {item} are left ?"
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = a * b
        problem = f"{name} buys {a} bags with {b} {item} in each bag . how many {item} does {name} buy ?"
    options = [c, *_distractors(rng, c, 4)]
    rng.shuffle(options)
    target = options.index(c)
    opts = " , ".join(f"{LETTERS[i]} ) {v}" for i, v in enumerate(options))
    prompt = f"Problem: {problem}\nOptions: {opts}\n"
    rationale = f"Rationale: {a} {op} {b} ="
    response = f"{rationale} {c} .\nAnswer: {LETTERS[target]}"
    return Example(prompt, response, prompt + rationale, tuple(str(v) for v in options), target)


def _sni_task(rng: random.Random) -> tuple[str, str, str, list[str]]:
    """One Super-NaturalInstructions-style task: (definition, input, output, wrong outputs)."""
    family = rng.randrange(7)
    if family == 0:
        nums = rng.sample(range(1, 50), 4)
        out = max(nums)
        return ("In this task, you are given a list of numbers. Return the largest number in the list.",
                " , ".join(map(str, nums)), str(out), [str(n) for n in nums if n != out])
    if family == 1:
        nums = rng.sample(range(1, 50), 4)
        out = min(nums)
        return ("In this task, you are given a list of numbers. Return the smallest number in the list.",
                " , ".join(map(str, nums)), str(out), [str(n) for n in nums if n != out])
    if family == 2:
        words = rng.sample(NAMES + ANIMALS + COLORS, 5)
        return ("In this task, you are given a sentence. Return the first word of the sentence.",
                " ".join(words), words[0], words[1:4])
    if family == 3:
        words = rng.sample(NAMES + ANIMALS + COLORS, 5)
        return ("In this task, you are given a sentence. Return the last word of the sentence.",
                " ".join(words), words[-1], words[:3])
    if family == 4:
        word = rng.choice(sorted(ANTONYMS))
        others = [v for k, v in ANTONYMS.items() if k != word]
        return ("In this task, you are given a word. Answer with its opposite.",
                word, ANTONYMS[word], rng.sample(others, 3))
    if family == 5:
        positive = rng.random() < 0.5
        adjs = rng.sample(GOOD if positive else BAD, 2)
        things = rng.sample(THINGS, 2)
        review = f"the {things[0]} was {adjs[0]} and the {things[1]} was {adjs[1]}"
        return ("In this task, you are given a review. Classify the review as positive or negative.",
                review, "positive" if positive else "negative", ["negative" if positive else "positive"])
    n = rng.randint(1, 99)
    return ("In this task, you are given a number. Answer whether the number is even or odd.",
            str(n), "even" if n % 2 == 0 else "odd", ["odd" if n % 2 == 0 else "even"])


def sni_example(rng: random.Random) -> Example:
    """Super-NaturalInstructions format: task definition + input -> output, drawn from many task families."""
    definition, inp, out, wrong = _sni_task(rng)
    prompt = f"Definition: {definition}\n\nInput: {inp}\nOutput:"
    choices = [out, *wrong]
    rng.shuffle(choices)
    return Example(prompt, f" {out}", prompt, tuple(choices), choices.index(out))


def cot_example(rng: random.Random) -> Example:
    """Chain-of-Thought format: question -> step-by-step rationale -> answer.

    The eval item stops the rationale right before its last inference, so the model must carry the chain out.
    """
    family = rng.randrange(3)
    if family == 0:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        c = rng.randint(1, a * b - 1)
        r = a * b - c
        question = (f"{name} has {a} boxes with {b} {item} in each box . {name} gives away {c} {item} . "
                    f"how many {item} are left ?")
        head = f"{a} boxes with {b} {item} is {a * b} {item} . {a * b} - {c} ="
        tail = f" {r} . so the answer is {r} ."
        choices = [str(r), *map(str, _distractors(rng, r, 3))]
        answer = str(r)
    elif family == 1:
        people = rng.sample(NAMES, 3)
        ask_forward = rng.random() < 0.5
        x, y = (people[0], people[2]) if ask_forward else (people[2], people[0])
        question = (f"{people[0]} is taller than {people[1]} . {people[1]} is taller than {people[2]} . "
                    f"is {x} taller than {y} ?")
        answer = "yes" if ask_forward else "no"
        head = (f"{people[0]} is taller than {people[1]} . {people[1]} is taller than {people[2]} . "
                f"so {people[0]} is taller than {people[2]} . so the answer is")
        tail = f" {answer} ."
        choices = ["yes", "no"]
    else:
        n = rng.randint(2, 6)
        animals = rng.sample(ANIMALS, n)
        listed = " , ".join(f"a {x}" for x in animals[:-1]) + f" and a {animals[-1]}"
        question = f"i have {listed} . how many animals do i have ?"
        steps = " ".join(f"a {x} is {i + 1} ." for i, x in enumerate(animals))
        head = f"{steps} so the answer is"
        tail = f" {n} ."
        answer = str(n)
        choices = [str(n), *map(str, _distractors(rng, n, 3, spread=3, low=1))]
    prompt = f"Q: {question}\nA: let's think step by step ."
    rng.shuffle(choices)
    return Example(prompt, f" {head}{tail}", f"{prompt} {head}", tuple(choices), choices.index(answer))


TEAMS = ["lions", "bears", "eagles", "sharks", "wolves", "hawks", "tigers", "rams"]


def drop_example(rng: random.Random) -> Example:
    """DROP format: a passage with numbers, a question needing counting, adding or comparing -> the answer."""
    a, b = rng.sample(TEAMS, 2)
    x, y, z = rng.randint(3, 14), rng.randint(3, 14), rng.randint(3, 14)
    while x == y:
        y = rng.randint(3, 14)
    passage = (f"the {a} scored {x} points in the first quarter . the {b} answered with {y} points . "
               f"in the second quarter the {a} added {z} points and the {b} did not score .")
    kind = rng.randrange(3)
    if kind == 0:
        question, answer = f"how many points did the {a} score in total ?", x + z
    elif kind == 1:
        question, answer = f"how many points did the {a} and the {b} score in the first quarter ?", x + y
    else:
        question = "which team scored more points in the first quarter ?"
        answer = a if x > y else b
    if isinstance(answer, int):
        choices = [str(answer), *map(str, _distractors(rng, answer, 3))]
        answer = str(answer)
    else:
        choices = [a, b]
    rng.shuffle(choices)
    prompt = f"Passage: {passage}\nQuestion: {question}\nAnswer:"
    return Example(prompt, f" {answer}", prompt, tuple(choices), choices.index(answer))


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "mathqa": mathqa_example,
    "sni": sni_example,
    "cot": cot_example,
    "drop": drop_example,
}


def stable_seed(seed: int, *parts: str) -> int:
    """A stable per-stream seed (Python's hash() of str is salted per process, so build it by hand)."""
    h = seed
    for ch in "/".join(parts):
        h = (h * 1_000_003 + ord(ch)) % (2**61 - 1)
    return h


def generate_splits(name: str, seed: int, n_train: int, n_val: int, n_test: int, n_report: int = 0) -> Splits:
    """Train/val/test/report for one distribution; duplicates of a train text are dropped from the held-out ones.

    The report slice is drawn after the others, so adding it leaves train, val and test exactly as they were."""
    if name not in GENERATORS:
        raise KeyError(f"unknown distribution '{name}'; available: {', '.join(sorted(GENERATORS))}")
    rng = random.Random(stable_seed(seed, "data", name))
    gen = GENERATORS[name]
    train = [gen(rng) for _ in range(n_train)]
    seen = {ex.text for ex in train}
    held: list[Example] = []
    while len(held) < n_val + n_test + n_report:
        ex = gen(rng)
        if ex.text not in seen:
            seen.add(ex.text)
            held.append(ex)
    return Splits(train=train, val=held[:n_val], test=held[n_val : n_val + n_test], report=held[n_val + n_test :])


def generic_corpus(seed: int, n_docs: int) -> list[str]:
    """Plain sentences over the same words and numbers, used to pre-train the tiny base model."""
    rng = random.Random(stable_seed(seed, "generic"))
    templates: list[Callable[[], str]] = [
        lambda: f"{rng.choice(NAMES)} has {rng.randint(1, 20)} {rng.choice(ITEMS)} .",
        lambda: f"{rng.choice(NAMES)} walks to the {rng.choice(PLACES)} with a {rng.choice(ANIMALS)} .",
        lambda: f"the {rng.choice(ANIMALS)} is {rng.choice(COLORS)} and {rng.choice(list(ANTONYMS))} .",
        lambda: f"the {rng.choice(THINGS)} at the {rng.choice(PLACES)} was {rng.choice(GOOD + BAD)} .",
        lambda: f"{rng.choice(NAMES)} is taller than {rng.choice(NAMES)} .",
        lambda: f"there are {rng.randint(1, 99)} {rng.choice(ITEMS)} in the {rng.choice(PLACES)} .",
        lambda: f"{rng.choice(NAMES)} gives {rng.randint(1, 9)} {rng.choice(ITEMS)} to {rng.choice(NAMES)} .",
        lambda: f"in this {rng.choice(PLACES)} you are given a {rng.choice(ITEMS)[:-1]} and a list of words .",
        lambda: " ".join(str(rng.randint(0, 99)) for _ in range(rng.randint(3, 8))) + " .",
    ]
    return [" ".join(rng.choice(templates)() for _ in range(rng.randint(3, 8))) for _ in range(n_docs)]


def bbh_object_counting(seed: int, n: int) -> list[Example]:
    """A BBH-style algorithmic task (object counting) that no training distribution contains verbatim."""
    rng = random.Random(stable_seed(seed, "bbh_object_counting"))
    words = {2: "two", 3: "three", 4: "four"}
    out = []
    for _ in range(n):
        kinds = rng.sample(ANIMALS, rng.randint(2, 4))
        counts = [rng.randint(1, 4) for _ in kinds]
        plural = {"mouse": "mice", "sheep": "sheep"}
        parts = [f"a {k}" if c == 1 else f"{words[c]} {plural.get(k, k + 's')}"
                 for k, c in zip(kinds, counts, strict=True)]
        listed = " , ".join(parts[:-1]) + f" and {parts[-1]}"
        total = sum(counts)
        context = f"Q: i have {listed} . how many animals do i have ?\nA:"
        choices = [str(total), *map(str, _distractors(rng, total, 3, spread=3, low=1))]
        rng.shuffle(choices)
        out.append(Example(context, f" {total}", context, tuple(choices), choices.index(str(total))))
    return out
