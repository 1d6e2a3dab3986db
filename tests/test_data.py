import re

import pytest

from harness.data.builtin import GENERATORS, Example, bbh_object_counting, generate_splits, generic_corpus

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_deterministic_and_seeded(name):
    a = generate_splits(name, 0, 50, 10, 10)
    b = generate_splits(name, 0, 50, 10, 10)
    c = generate_splits(name, 1, 50, 10, 10)
    assert a == b
    assert [e.text for e in a.train] != [e.text for e in c.train]


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_splits_have_sizes_and_held_out_items_are_unseen(name):
    s = generate_splits(name, 0, 300, 40, 50)
    assert (len(s.train), len(s.val), len(s.test)) == (300, 40, 50)
    train = {e.text for e in s.train}
    held = [e.text for e in s.val + s.test]
    assert not train & set(held)
    assert len(set(held)) == len(held)


def test_mathqa_is_well_formed():
    for ex in generate_splits("mathqa", 3, 200, 1, 1).train:
        m = re.fullmatch(r"Problem: (.+)\nOptions: (.+)\n", ex.prompt)
        assert m, ex.prompt
        options = re.findall(r"([a-e]) \) (\d+)", m.group(2))
        assert [letter for letter, _ in options] == list("abcde")
        values = [int(v) for _, v in options]
        assert len(set(values)) == 5
        r = re.fullmatch(r"Rationale: (\d+) ([-+*]) (\d+) = (\d+) \.\nAnswer: ([a-e])", ex.response)
        assert r, ex.response
        a, op, b, c, letter = int(r[1]), r[2], int(r[3]), int(r[4]), r[5]
        assert OPS[op](a, b) == c
        assert values["abcde".index(letter)] == c
        assert ex.mc_choices[ex.mc_target] == str(c)
        assert ex.mc_context == ex.prompt + f"Rationale: {a} {op} {b} ="


def test_sni_is_well_formed_and_spans_many_task_families():
    examples = generate_splits("sni", 0, 300, 1, 1).train
    definitions = set()
    for ex in examples:
        m = re.fullmatch(r"Definition: (.+)\n\nInput: (.+)\nOutput:", ex.prompt)
        assert m, ex.prompt
        definitions.add(m.group(1))
        assert ex.response == " " + ex.mc_choices[ex.mc_target]
        assert len(set(ex.mc_choices)) == len(ex.mc_choices) >= 2
    assert len(definitions) == 7


def test_cot_is_question_rationale_answer():
    for ex in generate_splits("cot", 0, 200, 1, 1).train:
        assert ex.prompt.startswith("Q: ") and ex.prompt.endswith("\nA: let's think step by step .")
        answer = ex.mc_choices[ex.mc_target]
        assert ex.response.endswith(f"so the answer is {answer} .") or ex.response.endswith(f" = {answer} .")
        assert "so the answer is" in ex.response
        assert ex.text.startswith(ex.mc_context)  # the eval item is the example cut before its last inference


def test_cot_arithmetic_chain_is_correct():
    for ex in generate_splits("cot", 0, 200, 1, 1).train:
        m = re.search(r"(\d+) boxes with (\d+) \w+ is (\d+) \w+ \. (\d+) - (\d+) = (\d+) \. so the answer is (\d+)",
                      ex.response)
        if m:
            a, b, ab, ab2, c, r, ans = map(int, m.groups())
            assert a * b == ab == ab2 and ab - c == r == ans


def test_bbh_object_counting_answers_count_the_objects():
    words = {"a": 1, "two": 2, "three": 3, "four": 4}
    for ex in bbh_object_counting(0, 100):
        counted = sum(words[w] for w in re.findall(r"\b(a|two|three|four) \w+", ex.prompt.split("?")[0][5:]))
        assert ex.mc_choices[ex.mc_target] == str(counted)


def test_generic_corpus_is_deterministic():
    assert generic_corpus(0, 20) == generic_corpus(0, 20)
    assert generic_corpus(0, 20) != generic_corpus(1, 20)


def test_unknown_distribution_names_the_choices():
    with pytest.raises(KeyError, match="available: cot, drop, mathqa, sni"):
        generate_splits("gsm8k", 0, 1, 1, 1)


def test_drop_answers_follow_from_the_passage():
    for ex in generate_splits("drop", 0, 200, 1, 1).train:
        m = re.fullmatch(r"Passage: the (\w+) scored (\d+) points in the first quarter \. the (\w+) answered with "
                         r"(\d+) points \. in the second quarter the \1 added (\d+) points and the \3 did not score "
                         r"\.\nQuestion: (.+)\nAnswer:", ex.prompt)
        assert m, ex.prompt
        a, x, b, y, z, question = m[1], int(m[2]), m[3], int(m[4]), int(m[5]), m[6]
        answer = ex.mc_choices[ex.mc_target]
        assert ex.response == f" {answer}"
        if "in total" in question:
            assert answer == str(x + z)
        elif "score in the first quarter" in question:
            assert answer == str(x + y)
        else:
            assert answer == (a if x > y else b)


def test_real_data_examples_need_no_eval_item():
    ex = Example("Q: 2 + 2 ?\nA:", " 4")
    assert ex.text == "Q: 2 + 2 ?\nA: 4"
    assert (ex.mc_context, ex.mc_choices, ex.mc_target) == ("", (), -1)
    built = generate_splits("mathqa", 0, 5, 1, 1).train[0]
    assert built.mc_choices and 0 <= built.mc_target < len(built.mc_choices)
