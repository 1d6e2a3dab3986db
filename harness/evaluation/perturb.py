"""Seeded prompt perturbations for HELM-style robustness: typos, case, whitespace.

Robustness = accuracy when the test prompt is perturbed in ways that keep its meaning (HELM, Liang et al. 2022, §5.1:
typos, lowercasing, extra spaces). Each kind is a pure function `(text, rng) -> text`; `perturb` draws its randomness
from (seed, the text itself) through `data.builtin.stable_seed`, never from Python's salted `hash`, so one prompt gets
one perturbation for every model, run and process — the accuracy drop then compares models, not perturbation draws.

Words are runs of letters (any script); digits, punctuation, symbols and one-letter words are never touched, so the
numbers in a maths question and option labels such as `A.` or `a )` (which the scored answer may name) keep their
value. Only the text a caller passes in is perturbed: the caller
keeps answer choices and targets out of it (harness/evaluation/ perturbs the test doc's own prompt only).
"""

from __future__ import annotations

import difflib
import functools
import random
import re
from collections.abc import Callable, Sequence

from harness.data.builtin import stable_seed

VERSION = 1  # bump when any perturbation's output changes: part of an evaluation's cache key, stored beside scores
RATE = 0.1  # share of the eligible words (or gaps) perturbed, at least one; HELM's typo probability is 0.1 per word
WORD = re.compile(r"[^\W\d_]+")  # a run of letters
GAP = re.compile(r"(?<=\S)\s+(?=\S)")  # whitespace between two non-space characters: never leading or trailing
EXTRA_SPACE = (" ", "  ", "\t", "\n")  # what `whitespace` adds to a gap

Perturbation = Callable[[str, random.Random], str]


def _chosen(rng: random.Random, n: int) -> set[int]:
    """Indices of the items to perturb: RATE of n, at least one (so the prompt always changes), none of none."""
    return set(rng.sample(range(n), max(1, round(RATE * n)))) if n else set()


def _edit_matches(text: str, pattern: re.Pattern[str], rng: random.Random, keep: Callable[[str], bool],
                  edit: Callable[[str, random.Random], str]) -> str:
    """Rewrite a random RATE share of the `pattern` matches that `keep` accepts; everything else stays verbatim."""
    spans = [m.span() for m in pattern.finditer(text) if keep(m.group())]
    picked = _chosen(rng, len(spans))
    out, last = [], 0
    for i, (start, end) in enumerate(spans):
        if i in picked:
            out += [text[last:start], edit(text[start:end], rng)]
            last = end
    return "".join([*out, text[last:]])


def _typo(word: str, rng: random.Random) -> str:
    """Swap two different neighbouring letters, drop one, or double one (a word of 3+ letters keeps 2+)."""
    swaps = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    op = rng.choice(("swap", "drop", "double")) if swaps else rng.choice(("drop", "double"))
    if op == "swap":
        i = rng.choice(swaps)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    i = rng.randrange(len(word))
    return word[:i] + word[i + 1:] if op == "drop" else word[:i] + word[i] + word[i:]


def typos(text: str, rng: random.Random) -> str:
    """Misspell a tenth of the words of 3+ letters (at least one): each loses, gains or swaps one letter."""
    return _edit_matches(text, WORD, rng, lambda w: len(w) >= 3, _typo)


@functools.lru_cache(maxsize=1 << 14)  # called for every word of every prompt; words repeat
def _recasings(word: str) -> tuple[str, ...]:
    """Other casings of the same letters (upper, lower, capitalised, swapped); none for caseless scripts, and
    none that changes a letter ('ß' → 'SS')."""
    options = {word.upper(), word.lower(), word.capitalize(), word.swapcase()} - {word}
    return tuple(sorted(o for o in options if len(o) == len(word) and o.casefold() == word.casefold()))


def _recase(word: str, rng: random.Random) -> str:
    return rng.choice(_recasings(word))


def case(text: str, rng: random.Random) -> str:
    """Recase a tenth of the cased words of 2+ letters (at least one): letters, spacing and length stay the same.

    Word-level rather than HELM's whole-prompt lowercasing: it keeps the prompt readable and perturbs prompts that
    are already lowercase (the built-in tasks), where lowercasing would change nothing.
    """
    return _edit_matches(text, WORD, rng, lambda w: len(w) >= 2 and bool(_recasings(w)), _recase)


def whitespace(text: str, rng: random.Random) -> str:
    """Widen a tenth of the gaps between words (at least one) with extra spaces, a tab or a newline.

    Existing whitespace is kept and only added to, and never at either end, so the words, their order and the
    prompt's edges (where lm-eval's target delimiter joins the answer) are unchanged.
    """
    return _edit_matches(text, GAP, rng, lambda _: True, lambda gap, r: gap + r.choice(EXTRA_SPACE))


PERTURBATIONS: dict[str, Perturbation] = {"typos": typos, "case": case, "whitespace": whitespace}
KINDS: tuple[str, ...] = tuple(PERTURBATIONS)


def unknown_kinds(kinds: Sequence[str]) -> list[str]:
    """One problem line per unknown kind, with a did-you-mean, for config checks (empty when all are known)."""
    problems = []
    for kind in kinds:
        if kind not in PERTURBATIONS:
            close = difflib.get_close_matches(str(kind), KINDS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"unknown perturbation '{kind}'.{hint} Available: {', '.join(KINDS)}")
    return problems


def perturb(text: str, seed: int, kinds: Sequence[str] = KINDS) -> str:
    """`text` with every listed kind applied, in KINDS order whatever the list's order (so configs that list the
    same kinds agree); the RNG comes from (seed, text). A non-blank text never comes back blank."""
    if problems := unknown_kinds(kinds):
        raise KeyError("; ".join(problems))
    return _perturbed(text, seed, frozenset(kinds))


@functools.lru_cache(maxsize=1 << 16)  # pure; every scored model and the per-sample records ask for the same prompts
def _perturbed(text: str, seed: int, kinds: frozenset[str]) -> str:
    rng = random.Random(stable_seed(seed, "perturb", text))
    out = text
    for kind in KINDS:
        if kind in kinds:
            out = PERTURBATIONS[kind](out, rng)
    return out if out.strip() or not text.strip() else text
