"""Training-data sources: every format from local files and through a hub mirror, splits, fingerprints, errors.

Fixtures are a few rows each, written here in each dataset's real schema (MathQA records, SNI task files and the
hub's flattened rows, FLAN's headerless TSV, any dataset for `text`).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from harness.config import SourceConfig
from harness.data.builtin import Example, generate_splits
from harness.data.mirror import hub_mirror
from harness.data.sources import (
    FORMATS,
    SourceError,
    carve_sizes,
    check_source,
    format_flan_cot,
    format_mathqa,
    format_sni,
    load_distribution,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own datasets cache, so nothing leaks between tests or into ~/.cache; and datasets does
    not ping the hub to count loads of its json/csv builders (a DNS lookup that can stall seconds offline)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    datasets.disable_progress_bars()


def mathqa_rows(n: int = 8) -> list[dict]:
    return [{"Problem": f"a train covers {10 * i} km in 2 hours . what is its speed ?",
             "Rationale": f'"speed = {10 * i} / 2 = {5 * i} km / hr answer a"',
             "options": f"a ) {5 * i} , b ) 3 , c ) 4 , d ) 5 , e ) none of these", "correct": "a",
             "annotated_formula": "divide(n0, n1)", "linear_formula": "divide(n0,n1)|", "category": "physics"}
            for i in range(1, n + 1)]


def sni_task(name: str, n: int = 6, definition_as_list: bool = True) -> dict:
    definition = "Classify the review as POS or NEG"
    return {
        "Contributors": ["Someone"], "Source": [name], "Categories": ["Sentiment Analysis"],
        "Definition": [definition] if definition_as_list else definition,
        "Positive Examples": [{"input": "a great film", "output": "POS", "explanation": "It is praised."},
                              {"input": "dull and long!", "output": "NEG", "explanation": "It is criticised."}],
        "Negative Examples": [{"input": "fine", "output": "good", "explanation": "Not a label."}],
        "Instances": [{"id": f"{name}-{i}", "input": f"{name} review {i}", "output": ["POS" if i % 2 else "NEG"]}
                      for i in range(n)],
    }


def sni_flat_rows(n: int = 6) -> list[dict]:
    return [{"task_name": "task363_sst2", "id": f"task363-{i}", "definition": "Classify the review as POS or NEG.",
             "inputs": f"flat review {i}", "targets": "POS" if i % 2 else "NEG"} for i in range(n)]


def cot_rows(n: int = 8) -> list[dict]:
    return [{"question": f'Claim: "Item {i} is red."\nIs the claim above correct?\nOptions:\n- yes\n- no',
             "answer": "yes" if i % 2 else "no", "rationale": f'Item {i} is "red" by definition.\nSo it is.'}
            for i in range(n)]


def write_tsv(path: Path, rows: list[dict]) -> Path:
    """FLAN's layout: question<TAB>answer<TAB>rationale, no header, newlines stored as the two characters \\n."""
    lines = ["\t".join(r[k].replace("\n", "\\n") for k in ("question", "answer", "rationale")) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def load(source: SourceConfig, name: str = "d", seed: int = 0, n_train: int = 100, n_val: int = 2,
         mirror: Path | None = None):
    with hub_mirror(mirror):
        return load_distribution(name, source, seed=seed, n_train=n_train, n_val=n_val, n_test=5, n_report=0)


def texts(d) -> set[str]:
    return {e.text for e in d.train + d.val}


def expected(formatter, rows: list[dict], source: SourceConfig) -> set[str]:
    return {"".join(formatter(r, source)) for r in rows}


# ------------------------------------------------------------------------------------------- templates


def test_mathqa_template():
    prompt, response = format_mathqa(mathqa_rows(1)[0], SourceConfig(format="mathqa"))
    assert prompt == ("Problem: a train covers 10 km in 2 hours . what is its speed ?\n"
                      "Options: a ) 5 , b ) 3 , c ) 4 , d ) 5 , e ) none of these\n")
    assert response == "Rationale: speed = 10 / 2 = 5 km / hr answer a\nAnswer: a"


def test_sni_template_is_tk_instruct_with_positive_examples():
    row = {"definition": "Classify the review as POS or NEG", "inputs": "so good",
           "targets": ["POS", "positive"],
           "positive_examples": [{"input": "a great film", "output": "POS"}, {"input": "dull!", "output": "NEG"}]}
    prompt, response = format_sni(row, SourceConfig(format="sni", n_positive_examples=1))
    assert prompt == ("Definition: Classify the review as POS or NEG.\n\n"
                      " Positive Example 1 -\nInput: a great film.\n Output: POS.\n\n"
                      "Now complete the following example -\nInput: so good.\nOutput:")
    assert response == " POS"
    zero_shot, _ = format_sni(row, SourceConfig(format="sni", n_positive_examples=0))
    assert "Positive Example" not in zero_shot


def test_flan_cot_template():
    prompt, response = format_flan_cot({"question": "Is 2 even?\\nOptions:\\n- yes\\n- no", "answer": "yes",
                                        "rationale": "2 = 2 * 1.\\nSo 2 is even."}, SourceConfig(format="flan_cot"))
    assert prompt == "Q: Is 2 even?\nOptions:\n- yes\n- no\nA: Let's think step by step."
    assert response == " 2 = 2 * 1.\nSo 2 is even. So the answer is yes."


def test_every_format_documents_its_template_and_response():
    for fmt in FORMATS.values():
        assert fmt.template
        if fmt.format_row is not None:
            assert "prompt:" in fmt.format_row.__doc__ and "response:" in fmt.format_row.__doc__


# ------------------------------------------------------------------------------------- local files


def test_mathqa_json_array(tmp_path):
    rows = mathqa_rows()
    src = SourceConfig(format="mathqa", path=str(write_json(tmp_path / "mathqa.json", rows)))
    d = load(src, n_train=6, n_val=2)
    assert (len(d.train), len(d.val), d.test) == (6, 2, [])
    assert texts(d) == expected(format_mathqa, rows, src)
    assert d.info["rows_available"] == 8 and d.info["format"] == "mathqa" and not d.info["short"]
    assert all(isinstance(e, Example) and e.mc_choices == () for e in d.train)


def test_sni_task_file_and_folder_of_task_files(tmp_path):
    write_json(tmp_path / "tasks" / "task001_a.json", sni_task("task001", 5))
    write_json(tmp_path / "tasks" / "task002_b.json", sni_task("task002", 7, definition_as_list=False))
    (tmp_path / "tasks" / "README.md").write_text("not data")
    one = load(SourceConfig(format="sni", path=str(tmp_path / "tasks" / "task001_a.json")), n_train=3, n_val=2)
    assert one.info["rows_available"] == 5
    assert {e.text.split("Input: ")[-1].split(".")[0] for e in one.train + one.val} == {
        f"task001 review {i}" for i in range(5)}
    both = load(SourceConfig(format="sni", path=str(tmp_path / "tasks")), n_train=10, n_val=2)
    assert both.info["rows_available"] == 12
    ex = both.train[0]
    assert ex.prompt.startswith("Definition: Classify the review as POS or NEG.\n\n Positive Example 1 -\n")
    assert ex.prompt.count("Positive Example") == 2 and ex.prompt.endswith("\nOutput:")
    assert ex.response in (" POS", " NEG")


def test_sni_flattened_hub_rows_from_a_local_file(tmp_path):
    rows = sni_flat_rows()
    src = SourceConfig(format="sni", path=str(write_jsonl(tmp_path / "sni.jsonl", rows)))
    d = load(src, n_train=4, n_val=2)
    assert texts(d) == expected(format_sni, rows, src)


def test_flan_cot_official_tsv_keeps_quotes_and_unescapes_newlines(tmp_path):
    rows = cot_rows()
    rows[0]["question"] = '"Quoted start" is odd?'  # a field opening with a quote: QUOTE_MINIMAL would eat it
    rows[1]["answer"] = "None"  # pandas' default NA values must stay text
    path = write_tsv(tmp_path / "creak_train.tsv", rows)
    assert "\\n" in path.read_text()
    src = SourceConfig(format="flan_cot", path=str(path))
    d = load(src, n_train=6, n_val=2)
    assert texts(d) == expected(format_flan_cot, rows, src)
    assert any(e.prompt.startswith('Q: "Quoted start" is odd?') for e in d.train + d.val)
    assert not any("\\n" in e.text for e in d.train + d.val)


def test_flan_cot_jsonl_and_folder_of_tsvs(tmp_path):
    rows = cot_rows()
    src = SourceConfig(format="flan_cot", path=str(write_jsonl(tmp_path / "cot.jsonl", rows)))
    assert texts(load(src, n_train=6, n_val=2)) == expected(format_flan_cot, rows, src)
    (tmp_path / "tsvs").mkdir()
    write_tsv(tmp_path / "tsvs" / "a_train.tsv", rows[:4])
    write_tsv(tmp_path / "tsvs" / "b_train.tsv", rows[4:])
    (tmp_path / "tsvs" / "LICENSE").write_text("Apache-2.0")
    folder = load(SourceConfig(format="flan_cot", path=str(tmp_path / "tsvs")), n_train=6, n_val=2)
    assert texts(folder) == expected(format_flan_cot, rows, src)


def test_text_format_with_custom_fields(tmp_path):
    rows = [{"instruction": f"Add {i} and 1.", "output": str(i + 1), "extra": "x"} for i in range(6)]
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("instruction,output,extra\n" + "".join(f'"{r["instruction"]}",{r["output"]},x\n'
                                                               for r in rows))
    src = SourceConfig(format="text", path=str(csv_path), prompt_field="instruction", response_field="output")
    d = load(src, n_train=4, n_val=2)
    assert texts(d) == {f"Add {i} and 1. {i + 1}" for i in range(6)}
    assert d.train[0].prompt.startswith("Add") and d.train[0].response.startswith(" ")


def test_fields_maps_renamed_columns(tmp_path):
    rows = [{"source": r["question"], "target": r["answer"], "rationale": r["rationale"]} for r in cot_rows()]
    src = SourceConfig(format="flan_cot", path=str(write_jsonl(tmp_path / "cot.jsonl", rows)),
                       fields={"question": "source", "answer": "target"})
    assert texts(load(src, n_train=6, n_val=2)) == expected(format_flan_cot, cot_rows(), src)


# ----------------------------------------------------------------------------------------- hub mirror


@pytest.mark.parametrize("streaming", [False, True])
def test_every_format_through_a_hub_mirror(tmp_path, streaming):
    mirror = tmp_path / "mirror"
    write_jsonl(mirror / "regisss/math_qa/default/train.jsonl", mathqa_rows())
    write_jsonl(mirror / "Muennighoff/natural-instructions/default/train.jsonl", sni_flat_rows())
    write_jsonl(mirror / "allenai/sni-tasks/default/train.jsonl", [sni_task("task001", 4), sni_task("task002", 4)])
    write_jsonl(mirror / "someone/flan-cot/gsm8k/train.jsonl", cot_rows()[:5])  # one config per FLAN CoT set
    write_jsonl(mirror / "someone/flan-cot/creak/train.jsonl", cot_rows()[5:])
    write_jsonl(mirror / "someone/pairs/default/train.jsonl", [{"q": f"q{i}", "a": f"a{i}"} for i in range(6)])
    cases = [
        (SourceConfig(format="mathqa", path="regisss/math_qa"),
         expected(format_mathqa, mathqa_rows(), SourceConfig())),
        (SourceConfig(format="sni", path="Muennighoff/natural-instructions"),
         expected(format_sni, sni_flat_rows(), SourceConfig())),
        (SourceConfig(format="sni", path="allenai/sni-tasks"), None),
        (SourceConfig(format="flan_cot", path="someone/flan-cot", configs=["gsm8k", "creak"]),
         expected(format_flan_cot, cot_rows(), SourceConfig())),
        (SourceConfig(format="text", path="someone/pairs", prompt_field="q", response_field="a"),
         {f"q{i} a{i}" for i in range(6)}),
    ]
    for src, want in cases:
        src.streaming = streaming
        d = load(src, n_train=100, n_val=2, mirror=mirror)
        assert len(d.val) == 2 and len(d.train) >= 4, src
        if want is not None:
            assert texts(d) == want, src
    tasks = load(SourceConfig(format="sni", path="allenai/sni-tasks", streaming=streaming), n_val=2, mirror=mirror)
    assert len(texts(tasks)) == 8 and all(e.prompt.count("Positive Example") == 2 for e in tasks.train)


def test_hub_validation_split_is_used_when_named(tmp_path):
    mirror = tmp_path / "mirror"
    write_jsonl(mirror / "regisss/math_qa/default/train.jsonl", mathqa_rows(6))
    write_jsonl(mirror / "regisss/math_qa/default/validation.jsonl", mathqa_rows(9)[6:])
    d = load(SourceConfig(format="mathqa", path="regisss/math_qa", val_split="validation"), n_train=10, n_val=3,
             mirror=mirror)
    assert texts(d) == expected(format_mathqa, mathqa_rows(9), SourceConfig())
    assert {e.text for e in d.val} == expected(format_mathqa, mathqa_rows(9)[6:], SourceConfig())


def test_a_missing_mirror_split_is_a_source_error(tmp_path):
    write_jsonl(tmp_path / "mirror/regisss/math_qa/default/train.jsonl", mathqa_rows())
    with pytest.raises(SourceError, match=r"^data\.sources\.d: regisss/math_qa \[test\]: cannot read: .*test\.jsonl"):
        load(SourceConfig(format="mathqa", path="regisss/math_qa", split="test"), mirror=tmp_path / "mirror")


# --------------------------------------------------------------------------------------------- splits


def test_splits_are_seeded_disjoint_and_val_stays_put_when_n_train_changes(tmp_path):
    rows = mathqa_rows(40)
    src = SourceConfig(format="mathqa", path=str(write_json(tmp_path / "m.json", rows)))
    a, b, c = load(src, n_train=20, n_val=5), load(src, n_train=20, n_val=5), load(src, seed=1, n_train=20, n_val=5)
    assert a == b
    assert [e.text for e in a.train] != [e.text for e in c.train]
    assert not {e.text for e in a.train} & {e.text for e in a.val}
    bigger = load(src, n_train=30, n_val=5)
    assert bigger.val == a.val and bigger.train[:20] == a.train
    assert load(src, name="other", n_train=20, n_val=5).val != a.val  # each distribution its own stream


def test_per_source_sizes_override_data_sizes(tmp_path):
    src = SourceConfig(format="mathqa", path=str(write_json(tmp_path / "m.json", mathqa_rows(20))), n_train=7,
                       n_val=3)
    d = load(src, n_train=100, n_val=50)
    assert (len(d.train), len(d.val)) == (7, 3) and d.info["requested"] == {"train": 7, "val": 3, "report": 0}


def test_short_source_uses_every_row_and_says_so(tmp_path):
    d = load(SourceConfig(format="mathqa", path=str(write_json(tmp_path / "m.json", mathqa_rows(10)))),
             n_train=100, n_val=20)
    assert (len(d.train), len(d.val)) == (5, 5) and d.info["short"]


def test_duplicate_rows_never_straddle_train_and_val(tmp_path):
    rows = mathqa_rows(3) * 4
    d = load(SourceConfig(format="mathqa", path=str(write_json(tmp_path / "m.json", rows))), n_train=20, n_val=2)
    assert not {e.text for e in d.train} & {e.text for e in d.val}
    assert len({e.text for e in d.val}) == len(d.val)


def test_builtin_wraps_the_generators_unchanged():
    d = load_distribution("mathqa", SourceConfig(), seed=0, n_train=50, n_val=10, n_test=10)
    s = generate_splits("mathqa", 0, 50, 10, 10)
    assert (d.train, d.val, d.test) == (s.train, s.val, s.test)
    assert d.fingerprint == load_distribution("mathqa", SourceConfig(), seed=0, n_train=50, n_val=10,
                                              n_test=10).fingerprint


# --------------------------------------------------------------------------------------- the report slice


def test_builtin_report_slice_is_disjoint_seeded_and_leaves_the_other_splits_as_they_were():
    without = load_distribution("mathqa", SourceConfig(), seed=0, n_train=50, n_val=10, n_test=10, n_report=0)
    d = load_distribution("mathqa", SourceConfig(), seed=0, n_train=50, n_val=10, n_test=10, n_report=7)
    assert (d.train, d.val, d.test, d.fingerprint) == (without.train, without.val, without.test, without.fingerprint)
    assert len(d.report) == 7 and d.info["report"] == 7
    report = {e.text for e in d.report}
    assert not report & ({e.text for e in d.train} | {e.text for e in d.val} | {e.text for e in d.test})
    again = load_distribution("mathqa", SourceConfig(), seed=0, n_train=50, n_val=10, n_test=10, n_report=7)
    assert again.report == d.report and again.report_fingerprint == d.report_fingerprint != ""
    other = load_distribution("mathqa", SourceConfig(), seed=1, n_train=50, n_val=10, n_test=10, n_report=7)
    assert other.report != d.report


def test_real_report_slice_is_drawn_after_train_and_val(tmp_path):
    rows = mathqa_rows(20)
    src = SourceConfig(format="mathqa", path=str(write_json(tmp_path / "m.json", rows)))
    without = load(src, n_train=10, n_val=3)
    with hub_mirror(None):
        d = load_distribution("d", src, seed=0, n_train=10, n_val=3, n_test=5, n_report=4)
        default = load_distribution("d", src, seed=0, n_train=10, n_val=3, n_test=5)  # None: as many as n_val
    assert (d.train, d.val, d.fingerprint) == (without.train, without.val, without.fingerprint)
    assert len(d.report) == 4 and len(default.report) == 3 and not d.info["short"]
    seen = {e.text for e in d.train} | {e.text for e in d.val}
    assert not {e.text for e in d.report} & seen
    # Short of rows: the held-out slices keep their sizes until train would hold fewer rows than they do.
    assert carve_sizes(20, 100, 3, 4) == (13, 3, 4)
    assert carve_sizes(10, 100, 4, 4) == (5, 3, 2)


# --------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_follows_the_rows_used_and_only_them(tmp_path):
    rows = mathqa_rows(20)
    path = write_json(tmp_path / "m.json", rows)
    src = SourceConfig(format="mathqa", path=str(path))
    base = load(src, n_train=8, n_val=2)
    used = texts(base)
    unused = next(i for i, r in enumerate(rows) if "".join(format_mathqa(r, src)) not in used)
    used_i = next(i for i, r in enumerate(rows) if "".join(format_mathqa(r, src)) in used)

    rows[unused]["Problem"] += " (edited)"
    write_json(path, rows)
    assert load(src, n_train=8, n_val=2).fingerprint == base.fingerprint
    rows[used_i]["Rationale"] = '"a different rationale answer a"'
    write_json(path, rows)
    assert load(src, n_train=8, n_val=2).fingerprint != base.fingerprint
    n_pos = SourceConfig(format="sni", path=str(write_json(tmp_path / "t.json", sni_task("task001"))))
    assert load(n_pos).fingerprint != load(SourceConfig(**{**vars(n_pos), "n_positive_examples": 1})).fingerprint


# ------------------------------------------------------------------------------------------ bad input


def one_line_error(src: SourceConfig, **kw) -> str:
    with pytest.raises(SourceError) as err:
        load(src, **kw)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unknown_format_suggests_and_lists(tmp_path):
    msg = one_line_error(SourceConfig(format="flan-cot", path=str(tmp_path)))
    assert msg == ("data.sources.d.format: unknown format 'flan-cot'. Did you mean 'flan_cot'? "
                   "Available: builtin, mathqa, sni, flan_cot, text")


def test_missing_and_empty_files(tmp_path):
    assert one_line_error(SourceConfig(format="mathqa", path=str(tmp_path / "nope.json"))) == (
        f"data.sources.d: {tmp_path / 'nope.json'}: no such file or folder")
    (tmp_path / "empty.jsonl").touch()
    assert one_line_error(SourceConfig(format="mathqa", path=str(tmp_path / "empty.jsonl"))) == (
        f"data.sources.d: {tmp_path / 'empty.jsonl'}: file is empty")
    (tmp_path / "none.json").write_text("[]")
    assert "cannot read" in one_line_error(SourceConfig(format="mathqa", path=str(tmp_path / "none.json")))
    (tmp_path / "folder").mkdir()
    assert "folder holds no" in one_line_error(SourceConfig(format="sni", path=str(tmp_path / "folder")))


def test_a_row_missing_a_field_names_file_row_and_field(tmp_path):
    rows = mathqa_rows(4)
    del rows[2]["Rationale"]
    path = write_json(tmp_path / "mathqa.json", rows)
    assert one_line_error(SourceConfig(format="mathqa", path=str(path))) == (
        f"data.sources.d: {path}: row 3: missing field 'Rationale'")
    no_column = write_jsonl(tmp_path / "cot.jsonl", [{"question": "q", "answer": "a"}] * 3)
    assert one_line_error(SourceConfig(format="flan_cot", path=str(no_column))) == (
        f"data.sources.d: {no_column}: row 1: missing field 'rationale' (format flan_cot needs question, answer, "
        "rationale; the data has question, answer)")
    task = sni_task("task001", 4)
    task["Instances"][2]["output"] = []
    task_path = write_json(tmp_path / "task001.json", task)
    assert one_line_error(SourceConfig(format="sni", path=str(task_path))) == (
        f"data.sources.d: {task_path}: Instances[2]: missing field 'output'")
    task = sni_task("task001", 4)
    task["Positive Examples"][1]["output"] = ""
    task_path = write_json(tmp_path / "task001.json", task)
    assert one_line_error(SourceConfig(format="sni", path=str(task_path))).endswith(
        ": missing field 'Positive Examples[1].output'")


def test_a_tsv_row_with_too_many_fields_names_the_line(tmp_path):
    path = tmp_path / "bad_train.tsv"
    path.write_text("q1\ta1\tr1\nq2\ta2\tr2\textra\n")
    assert one_line_error(SourceConfig(format="flan_cot", path=str(path))) == (
        f"data.sources.d: {path}: line 2: 4 tab-separated field(s), expected 3 (question, answer, rationale; the "
        "file has no header row)")


def test_a_four_column_flan_tsv_is_refused_not_read_with_an_index(tmp_path):
    """pandas reads a headerless file with one field more than its names on every row by taking the first column
    as an index: the question became the answer and the run went on. Every line must have exactly 3 fields."""
    path = tmp_path / "four_train.tsv"
    path.write_text("".join(f"task{i}\tquestion {i}?\tanswer {i}\trationale {i}\n" for i in range(8)))
    expected = (f"{path}: line 1: 4 tab-separated field(s), expected 3 (question, answer, rationale; the file has "
                "no header row)")
    assert one_line_error(SourceConfig(format="flan_cot", path=str(path))) == f"data.sources.d: {expected}"
    assert check_source("cot", SourceConfig(format="flan_cot", path=str(path))) == [f"data.sources.cot: {expected}"]
    header = tmp_path / "pairs.csv"
    header.write_text('prompt,response\n"a, b",c\nd,e,f\n')  # a header sets the count for every row
    assert one_line_error(SourceConfig(format="text", path=str(header))) == (
        f"data.sources.d: {header}: line 3: 3 comma-separated field(s), expected 2, as in the header on line 1")


def test_too_few_rows_is_an_error(tmp_path):
    path = write_json(tmp_path / "m.json", mathqa_rows(1))
    assert "need at least one for train and one for validation" in one_line_error(
        SourceConfig(format="mathqa", path=str(path)))


def test_check_source_finds_problems_before_loading(tmp_path):
    assert check_source("mathqa", SourceConfig()) == []
    assert check_source("gsm8k", SourceConfig()) == [
        "data.sources.gsm8k: no built-in generator 'gsm8k'; available: cot, drop, mathqa, sni "
        "(or give the distribution a source with a path)"]
    assert check_source("m", SourceConfig(format="mathqa")) == [
        "data.sources.m.path: format mathqa needs a hub id, a local file or a folder"]
    assert check_source("m", SourceConfig(format="mathqa", path="regisss/math_qa")) == []  # hub: not contacted
    rows = mathqa_rows(3)
    del rows[0]["correct"]
    path = write_json(tmp_path / "m.json", rows)
    assert check_source("m", SourceConfig(format="mathqa", path=str(path))) == [
        f"data.sources.m: {path}: row 1: missing field 'correct'"]
    assert check_source("m", SourceConfig(format="mathqa", path=str(tmp_path / "x.json"), n_val=0)) == [
        "data.sources.m.n_val=0: must be a positive integer or null",
        f"data.sources.m: {tmp_path / 'x.json'}: no such file or folder"]
    tsv = write_tsv(tmp_path / "cot.tsv", cot_rows())  # FLAN rows are not MathQA records
    assert check_source("m", SourceConfig(format="mathqa", path=str(tsv)))[0].startswith(
        f"data.sources.m: {tsv}: row 1: missing field 'Problem'")


# ------------------------------------------------------------------------------------------ real files


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real data not present")
def test_real_files_load_in_place():
    cot = load(SourceConfig(format="flan_cot", path=str(REAL / "flan_cot")), n_train=50, n_val=5)
    assert cot.info["rows_available"] == 33443
    assert all(e.prompt.startswith("Q: ") and " So the answer is " in e.response for e in cot.train)
    assert not any("\\n" in e.text for e in cot.train + cot.val)
    sni = load(SourceConfig(format="sni", path=str(REAL / "sni")), n_train=50, n_val=5)
    assert sni.info["rows_available"] == 1663
    assert all(e.prompt.startswith("Definition: ") and "Now complete the following example -\nInput: " in e.prompt
               for e in sni.train)
    mathqa = load(SourceConfig(format="mathqa", path=str(REAL / "mathqa" / "mathqa_sample.json")), n_train=50,
                  n_val=5)
    assert mathqa.info["rows_available"] == 815
    assert all(e.response.split("\nAnswer: ")[-1] in "abcde" for e in mathqa.train)
    assert all(not e.response.startswith('Rationale: "') for e in mathqa.train)


# --------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "data").glob("*.yaml")))
def test_shipped_data_presets_name_valid_sources(preset, monkeypatch):
    """Every distribution of every data preset has a source the schema accepts and check_source passes."""
    from omegaconf import OmegaConf

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)  # presets' relative paths are relative to the repository root
    monkeypatch.delenv("DEM_BENCH_REAL_DATA", raising=False)
    cfg = OmegaConf.load(root / "conf" / "data" / f"{preset}.yaml")
    sources = OmegaConf.to_container(cfg, resolve=True).get("sources") or {}
    # a preset may name sources it does not train by default (builtin's drop), so switching needs no `+`
    for name in dict.fromkeys([*cfg.distributions, *sources]):
        source = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SourceConfig), sources.get(name, {})))
        if source.path and source.path.startswith("../shared") and not REAL.is_dir():
            continue
        assert check_source(name, source, peek=True) == [], (preset, name)


def test_source_overrides_compose_without_plus(tmp_path):
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["data=paper", f"data.sources.cot.path={tmp_path}"])
    assert cfg.data.sources.cot.path == str(tmp_path) and cfg.data.sources.cot.format == "flan_cot"
    cfg = compose_cfg(["data=real", "data.sources={cot: {format: text, path: /x.jsonl}}"])
    assert (cfg.data.sources.cot.format, cfg.data.sources.cot.path) == ("text", "/x.jsonl")
    cfg = compose_cfg(["data.sources.mathqa={format: mathqa, path: /m.json}", "data.sources.sni.n_val=7"])
    assert (cfg.data.sources.mathqa.format, cfg.data.sources.sni.n_val) == ("mathqa", 7)  # the default preset too


def test_check_source_peeks_at_sni_task_files(tmp_path):
    task = sni_task("task001", 4)
    del task["Instances"][1]["input"]
    path = write_json(tmp_path / "task001.json", task)
    assert check_source("sni", SourceConfig(format="sni", path=str(path))) == [
        f"data.sources.sni: {path}: Instances[1]: missing field 'input'"]
