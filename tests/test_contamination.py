"""Training-vs-scored-task contamination: exact and 13-gram overlap, built-in and stock tasks, the refusal.

Every fixture is written here or by tests/fixtures_hub.py: a built-in task's test items, training sources that hold
some of them verbatim, reworded, or inside longer rows, and lm-eval's stock tasks read from a tiny hub mirror.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest

from harness.config import SourceConfig
from harness.data.builtin import Example
from harness.data.sources import Distribution, load_distribution
from harness.errors import HarnessError
from harness.evaluation import contamination as cm
from harness.evaluation.tasks import leaf_configs, stock_manager, write_tasks
from tests.conftest import compose_cfg
from tests.fixtures_hub import BOOLQ, MATHQA, MMLU_TEST, write_mirror

PREAMBLE = "Read the word problem below carefully and then choose the single best answer from the options."
QUESTIONS = [  # each well over 13 words, no two sharing a 13-gram
    "a farmer plants 12 rows of corn with 9 plants in each row and a storm destroys 15 plants . how many are left ?",
    "a tank holds 240 litres of water and a pipe drains 8 litres every minute . how long until the tank is empty ?",
    "the price of a coat rose by 20 % in march and then fell by 10 % in april . what is the overall change ?",
    "six workers build a wall in 10 days working at the same rate . how many days would 4 workers need for it ?",
    "a cyclist rides 45 km at 15 km per hour and then 30 km at 10 km per hour . what is the average speed ?",
    "a box holds red , blue and green marbles in the ratio 2 : 3 : 5 and there are 40 green ones . how many in all ?",
]
ANSWERS = ["93", "30 minutes", "8 % higher", "15 days", "12.5 km per hour", "80"]
REWORDED = [  # the same facts, other words: no 13-gram in common with QUESTIONS
    "corn field : twelve rows , nine stalks per row ; fifteen stalks lost in a storm . remaining stalks ?",
    "water tank , capacity 240 l , drained at 8 l / min by one pipe . time to empty it ?",
]
UNRELATED = [
    "Definition: Classify the review as positive or negative.\n\nInput: the soup was cold and the staff rude\nOutput:"
    " negative",
    "Q: is the sun a star ?\nA: let's think step by step . the sun is a star . so the answer is yes .",
]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own datasets cache (nothing leaks between tests); no download counting pings offline."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stock_manager()  # lm-eval's task index: built once for the module (8-15 s)
    return write_mirror(tmp_path_factory.mktemp("mirror"))


def items() -> list[Example]:
    """A built-in task's test items: the word problems above, four choices each, the first one right."""
    out = []
    for q, a in zip(QUESTIONS, ANSWERS, strict=True):
        context = f"{PREAMBLE}\nProblem: {q}\nAnswer:"
        out.append(Example(context, f" {a}", context, (a, "1", "2", "3"), 0))
    return out


def builtin_docs(tmp_path: Path) -> list[str]:
    """The documents lm-eval scores for the built-in task `mathqa_mc` holding items(), read as the pipeline would."""
    write_tasks_dir = tmp_path / "tasks"
    write_tasks(write_tasks_dir, {"mathqa_mc": items()})
    docs = cm.task_documents(["mathqa_mc"], task_dir=write_tasks_dir)
    assert list(docs) == ["mathqa_mc"]
    return docs["mathqa_mc"]


def source(name: str, rows: list[tuple[str, str]]) -> list[str]:
    """A training source of (prompt, response) rows; the texts trained on, as the pipeline gets them."""
    dist = Distribution(name, [Example(p, r) for p, r in rows], [], [], "", {})
    return cm.training_texts({name: dist})[name]


# ---------------------------------------------------------------- normalisation


def test_words_and_ngrams_follow_lm_eval_janitor() -> None:
    from lm_eval.decontamination.janitor import Janitor, word_ngrams

    janitor = Janitor()
    for text in ["The Quick, brown FOX -- jumps!\n\tover   the lazy dog's back (twice).", "Zürich: 12.5% ≥ x?",
                 QUESTIONS[0]]:
        assert cm.words(text) == janitor.normalize_string(text).split()
        tokens = cm.words(text)
        assert cm.ngrams(tokens, 5) == [hash(tuple(g.split())) for g in word_ngrams(janitor.normalize_string(text),
                                                                                      5)]
    assert cm.ngrams(cm.words("only twelve words here a b c d e f g h"), 13) == []


# ---------------------------------------------------------------- built-in tasks


def test_doc_text_is_the_prompt_and_the_gold_answer(tmp_path: Path) -> None:
    docs = builtin_docs(tmp_path)
    assert docs == [f"{ex.mc_context} {ex.mc_choices[ex.mc_target]}" for ex in items()]


def test_source_holding_builtin_test_items_verbatim_is_flagged_with_the_exact_count(tmp_path: Path) -> None:
    docs = builtin_docs(tmp_path)
    held = [(ex.mc_context, f" {ex.mc_choices[ex.mc_target]}") for ex in items()[:3]]  # 3 of the 6 test items
    train = source("leaky", [*held, *((u, " ok") for u in UNRELATED)])
    result = cm.overlap({"leaky": train}, {"mathqa_mc": docs})
    counts = result["leaky"]["mathqa_mc"]
    assert {k: counts[k] for k in ("docs", "exact", "ngram", "dirty", "contained", "short")} == {
        "docs": 6, "exact": 3, "ngram": 3, "dirty": 3, "contained": 3, "short": 0}
    assert counts["fraction"] == 0.5 and counts["examples"] == [0, 1, 2]
    assert cm.contaminated(result) == [("leaky", "mathqa_mc")]
    with pytest.raises(cm.ContaminationError) as err:
        cm.check(result)
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, HarnessError) and isinstance(err.value, ValueError)
    assert "leaky holds 3 of mathqa_mc's 6 test documents" in message
    assert "eval.allow_contamination=true" in message
    assert cm.check(result, allow=True) == [("leaky", "mathqa_mc")]  # allowed: the pairs come back to be flagged
    assert cm.check(result, exempt=["mathqa_mc"]) == []


def test_reworded_and_disjoint_rows_are_not_flagged(tmp_path: Path) -> None:
    docs = builtin_docs(tmp_path)
    train = source("clean", [(r, " ok") for r in REWORDED + UNRELATED])
    counts = cm.overlap({"clean": train}, {"mathqa_mc": docs})["clean"]["mathqa_mc"]
    assert (counts["exact"], counts["ngram"], counts["dirty"], counts["contained"]) == (0, 0, 0, 0)
    assert cm.check({"clean": {"mathqa_mc": counts}}) == []


def test_a_13_gram_inside_a_longer_row_is_found(tmp_path: Path) -> None:
    docs = builtin_docs(tmp_path)
    row = f"Worked example from a textbook. {QUESTIONS[4].upper()} Solution: time = 3 + 3 = 6 hours, so 75 / 6."
    result = cm.overlap({"book": [row, *UNRELATED]}, {"mathqa_mc": docs})
    counts = result["book"]["mathqa_mc"]
    assert (counts["exact"], counts["ngram"], counts["dirty"], counts["contained"]) == (0, 1, 1, 1)
    assert counts["examples"] == [4]
    assert cm.contaminated(result) == [("book", "mathqa_mc")]


def test_one_shared_phrase_is_dirty_but_does_not_refuse() -> None:
    doc = ("The Berlin Blockade served to highlight the competing ideological and economic visions for postwar "
           "Europe . By the spring of 1949 the airlift was clearly succeeding and on 12 May the USSR lifted the "
           "blockade of West Berlin .\nQuestion: was the berlin blockade lifted in 1949 ?\nAnswer: yes")
    row = "Q: THE Berlin Blockade SERVED TO HIGHLIGHT THE COMPETING IDEOLOGICAL AND ECONOMIC VISIONS FOR EUROPE ? yes"
    result = cm.overlap({"cot": [row]}, {"boolq": [doc]})
    counts = result["cot"]["boolq"]
    assert (counts["ngram"], counts["dirty"], counts["contained"]) == (1, 1, 0)  # 13 of 48 words
    assert cm.check(result) == []


def test_short_documents_are_found_by_the_exact_test_only() -> None:
    docs = {"tiny": ["Q: not ( True ) and ( True ) is\nA: False", "Q: True and not not ( not False ) is\nA: True"]}
    inside = "Explain: Q: not ( True ) and ( True ) is\nA: False. Because not True is False."
    counts = cm.overlap({"s": [inside]}, docs)["s"]["tiny"]
    assert (counts["short"], counts["exact"], counts["dirty"]) == (2, 0, 0)  # contained in a row: not found
    counts = cm.overlap({"s": ["q: NOT (true) and (true) is  a: false"]}, docs)["s"]["tiny"]
    assert (counts["exact"], counts["contained"], counts["examples"]) == (1, 1, [0])  # the same after normalising


def test_template_ngrams_shared_by_a_tasks_documents_are_not_counted(tmp_path: Path) -> None:
    docs = builtin_docs(tmp_path)  # every document opens with PREAMBLE (15 words)
    counts = cm.overlap({"p": [f"{PREAMBLE} Then some other text."]}, {"mathqa_mc": docs})["p"]["mathqa_mc"]
    assert counts["dirty"] == 0
    two = {"t": docs[:2]}  # in fewer than TEMPLATE_DOCS documents the preamble is content, and shared
    assert cm.overlap({"p": [PREAMBLE]}, two)["p"]["t"]["dirty"] == 2


def test_every_source_against_every_task() -> None:
    docs = {"a": [QUESTIONS[0]], "b": [QUESTIONS[1]]}
    result = cm.overlap({"x": [QUESTIONS[0]], "y": [QUESTIONS[1]], "z": []}, docs)
    assert {s: {t: c["contained"] for t, c in per.items()} for s, per in result.items()} == {
        "x": {"a": 1, "b": 0}, "y": {"a": 0, "b": 1}, "z": {"a": 0, "b": 0}}
    assert cm.contaminated(result) == [("x", "a"), ("y", "b")]


# ---------------------------------------------------------------- stock lm-eval tasks


def test_stock_task_documents_come_from_the_hub_mirror(mirror_root: Path) -> None:
    docs = cm.task_documents(["mmlu_abstract_algebra", "boolq"], mirror=mirror_root)
    question, choices, answer = MMLU_TEST[0]
    options = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", choices, strict=True))
    assert docs["mmlu_abstract_algebra"][0] == f"{question}{options}\nAnswer: {'ABCD'[answer]}"
    assert len(docs["mmlu_abstract_algebra"]) == len(MMLU_TEST)  # the test split, not the dev (few-shot) one
    row = BOOLQ[1]
    assert docs["boolq"][1] == f"{row['passage']}\nQuestion: {row['question']}?\nAnswer: {['no', 'yes'][row['label']]}"
    assert {t: len(d) for t, d in cm.task_documents(["mmlu_abstract_algebra", "boolq"], mirror=mirror_root,
                                                     limit=2).items()} == {"mmlu_abstract_algebra": 2, "boolq": 2}
    half = cm.task_documents(["mmlu_abstract_algebra", "boolq"], mirror=mirror_root, limit=0.5)
    assert {t: len(d) for t, d in half.items()} == {"mmlu_abstract_algebra": 2, "boolq": 2}  # ceil(4/2), ceil(3/2)


def test_training_on_mathqa_test_rows_refuses_lm_evals_mathqa(mirror_root: Path, tmp_path: Path) -> None:
    """The issue's case in miniature: MathQA test records as a `mathqa` training source, lm-eval's `mathqa` scored."""
    path = tmp_path / "mathqa.json"
    path.write_text(json.dumps([*MATHQA, {**MATHQA[0], "Problem": "a spare record for validation ."}]))
    dist = load_distribution("mathqa", SourceConfig(format="mathqa", path=str(path), n_train=3, n_val=1), seed=0,
                             n_train=3, n_val=1, n_test=0, n_report=0)
    trained = sum(any(r["Problem"] in ex.text for ex in dist.train) for r in MATHQA)  # the seeded draw: 2 or 3
    assert trained >= 2
    docs = cm.task_documents(["mathqa", "boolq"], mirror=mirror_root)
    result = cm.overlap(cm.training_texts({"mathqa": dist}), docs)
    counts = result["mathqa"]["mathqa"]
    assert (counts["docs"], counts["exact"], counts["contained"]) == (3, 0, trained)  # other template: 13-grams
    assert result["mathqa"]["boolq"]["dirty"] == 0
    with pytest.raises(cm.ContaminationError, match=f"mathqa holds {trained} of mathqa's 3 test documents"):
        cm.check(result)


def test_groups_are_expanded_to_leaf_tasks_and_flag_the_group(mirror_root: Path) -> None:
    docs = cm.task_documents(["bbh_fewshot"], mirror=mirror_root, limit=1)
    leaves = {task for task, _ in leaf_configs("bbh_fewshot")}
    assert set(docs) == leaves and len(leaves) == 27 and all(len(d) == 1 for d in docs.values())
    assert docs["bbh_fewshot_object_counting"] == [
        "Q: I have a chair, two potatoes and a cauliflower. How many objects do I have?\nA: 4"]
    results = {"bbh_fewshot": {"subtasks": sorted(leaves)}, **{leaf: {"subtasks": []} for leaf in leaves}}
    pairs = [("cot", "bbh_fewshot_object_counting")]
    assert cm.affected(pairs, results) == {"bbh_fewshot": ["cot"], "bbh_fewshot_object_counting": ["cot"]}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("preset", ["builtin", "helm", "paper"])
def test_allow_contamination_is_off_unless_set(preset: str) -> None:
    assert compose_cfg([f"eval={preset}"]).eval.allow_contamination is False
    assert compose_cfg([f"eval={preset}", "eval.allow_contamination=true"]).eval.allow_contamination is True


def test_the_comparison_refuses_before_any_training_and_says_how_to_override(mirror_root: Path, tmp_path: Path):
    """The CLI: MathQA test records as the `mathqa` training source and lm-eval's `mathqa` (the same split) scored
    → exit 2, one line, nothing built (no base model, no training run)."""
    import os
    import subprocess
    import sys

    from tests.conftest import MICRO

    path = tmp_path / "mathqa.json"  # the test records and two spares for the held-out slices
    path.write_text(json.dumps([*MATHQA, *({**MATHQA[0], "Problem": f"spare record {i} ."} for i in range(2))]))
    source = f"data.sources.mathqa={{format: mathqa, path: '{path}', n_val: 1}}"
    proc = subprocess.run([sys.executable, "-m", "harness", *MICRO, source, "eval.tasks=[mathqa, sni_mc]",
                           f"hub_mirror={mirror_root}", f"output_dir={tmp_path / 'out'}",
                           f"cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dem-bench: error")]
    assert len(errors) == 1 and re.search(r"mathqa holds [1-3] of mathqa's 3 test documents", errors[0]), errors
    assert "eval.allow_contamination=true" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / "base").exists() and not (tmp_path / "cache" / "train").exists()
