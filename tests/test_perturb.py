"""Seeded prompt perturbations: deterministic per (seed, text), each kind changes only what it says, never blank."""

from __future__ import annotations

import random
import re

import pytest

from harness.evaluation import perturb as pt
from harness.evaluation.tasks import EvalConfigError, check_perturbations

PROMPTS = [
    "Problem: mia has 6 cups and gets 2 more . how many cups does mia have now ?\nOptions: a ) 7 , b ) 8 , c ) 5 , "
    "d ) 6 , e ) 13\nRationale: 6 + 2 =",
    "Definition: In this task, you are given a word. Answer with its opposite.\n\nInput: fast\nOutput:",
    "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer:",
    "Q: Is the Straße in Zürich wide?\nA:",
]


def test_same_text_and_seed_same_output_different_seed_usually_differs():
    for text in PROMPTS:
        assert pt.perturb(text, 0) == pt.perturb(text, 0)
        assert len({pt.perturb(text, seed) for seed in range(6)}) >= 5, text


def test_pinned_output_the_same_in_every_process():
    """stable_seed, not Python's salted hash: this exact string in any process, on any machine."""
    assert pt.perturb(PROMPTS[1], 0) == ("Definition: In this task, you Are   given \ta word. Answer with its "
                                         "opposite.\n\nInpput: fast\noUTPUT:")
    assert pt.perturb(PROMPTS[1], 0, ["typos"]) == ("Definition: In this task, you are given a word. Answer with its "
                                                    "opposite.\n\nInpput: fast\nOutput:")


def test_list_order_does_not_matter():
    assert pt.perturb(PROMPTS[0], 3, ["whitespace", "case", "typos"]) == pt.perturb(PROMPTS[0], 3)


@pytest.mark.parametrize("kind", pt.KINDS)
def test_every_kind_changes_the_prompt(kind: str):
    for text in PROMPTS:
        for seed in range(5):
            assert pt.perturb(text, seed, [kind]) != text, (kind, seed, text)


def test_case_changes_only_case():
    for text in PROMPTS:
        out = pt.case(text, random.Random(1))
        assert out != text and out.casefold() == text.casefold() and len(out) == len(text)
        assert re.findall(r"\b\w\b", out) == re.findall(r"\b\w\b", text)  # one-letter words (option labels) kept
    assert pt.case("Straße", random.Random(0)) == "straße"  # not STRASSE: that changes a letter


def test_whitespace_changes_only_whitespace_and_never_the_edges():
    for text in PROMPTS:
        for seed in range(5):
            out = pt.whitespace(text, random.Random(seed))
            assert out != text and out.split() == text.split()
            assert out[0] == text[0] and out[-1] == text[-1] and len(out) > len(text)


def test_typos_touch_letters_only_and_keep_the_length_near():
    for text in PROMPTS:
        words = len([w for w in pt.WORD.findall(text) if len(w) >= 3])
        n_typos = max(1, round(pt.RATE * words))
        for seed in range(5):
            out = pt.typos(text, random.Random(seed))
            assert out != text and abs(len(out) - len(text)) <= n_typos
            assert pt.WORD.sub("#", out) == pt.WORD.sub("#", text)  # digits, punctuation, spacing untouched
            assert sum(a != b for a, b in zip(out.split(), text.split(), strict=True)) <= n_typos


def test_never_blank_and_nothing_to_perturb_is_kept():
    for text in ["ab", "a b", "xyz", "7 + 8 =", "?", " Answer: "]:
        for seed in range(10):
            assert pt.perturb(text, seed).strip(), text
    assert pt.perturb("", 0) == "" and pt.perturb("7", 0) == "7"
    rng = random.Random(0)
    for _ in range(200):  # random short texts: never blank
        text = "".join(rng.choice("ab c\n7.") for _ in range(rng.randrange(1, 12)))
        assert pt.perturb(text, rng.randrange(100)).strip() or not text.strip(), text


def test_unknown_kind_says_did_you_mean():
    with pytest.raises(KeyError, match=r"unknown perturbation 'typo'\. Did you mean 'typos'"):
        pt.perturb("some text", 0, ["typo"])
    with pytest.raises(EvalConfigError, match=r"^eval\.helm\.perturbations: unknown perturbation 'spaces'\. Did "
                                              r"you mean 'whitespace'\? Available: typos, case, whitespace$"):
        check_perturbations(["case", "spaces"])
    with pytest.raises(EvalConfigError, match="empty"):
        check_perturbations([])
