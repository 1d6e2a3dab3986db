"""Every input checked before anything is created: data files read in full (every row, exact columns, mirrored
evaluation files too).

Each CLI case calls `main()` in-process (every check runs before Hydra starts) and asserts exit code 2, one line,
and nothing created or altered anywhere under the working folder (its whole tree hashed before and after)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import harness.__main__ as cli
from harness import filecheck
from tests.conftest import MICRO
from tests.fixtures_hub import write_mirror
from tests.test_bad_input import _one_line, tree
from tests.test_sources import cot_rows, mathqa_rows, write_json, write_jsonl, write_tsv


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bad files of every kind, each bad only past the first rows (where the old check stopped looking)."""
    root = tmp_path_factory.mktemp("work")
    rows = cot_rows(8)
    write_tsv(root / "four.tsv", [{**r, "question": f"task{i}\t{r['question']}"} for i, r in enumerate(rows)])
    # ^ a fourth column on every line, which pandas took as an index: the question became the answer
    write_tsv(root / "late.tsv", rows)
    with (root / "late.tsv").open("a") as f:
        f.write("one question\tyes\ta rationale\tone field too many\n")
    math = mathqa_rows(10)
    del math[7]["Rationale"]
    write_json(root / "math.json", math)
    write_jsonl(root / "cot.jsonl", rows)
    lines = (root / "cot.jsonl").read_text().splitlines(keepends=True)
    lines[4] = lines[4][:-3] + "\n"  # line 5 loses its closing quote and brace
    (root / "cot.jsonl").write_text("".join(lines))
    mirror = write_mirror(root / "mirror")
    with (mirror / "regisss/math_qa/default/train.jsonl").open("a") as f:
        f.write('{"Problem": "a broken record", "options": \n')
    bbh = mirror / "SaylorTwift/bbh/boolean_expressions/test.jsonl"
    lines = bbh.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"target"', '"target', 1)
    bbh.write_text("".join(lines))
    return root


# (overrides, expected text in the one line). {w} is the module's folder of bad files.
CASES = [
    # data files, every row, before any folder exists
    (["data.sources.cot={format: flan_cot, path: '{w}/four.tsv'}"],
     "data.sources.cot: {w}/four.tsv: line 1: 4 tab-separated field(s), expected 3 (question, answer, rationale"),
    (["data.sources.cot={format: flan_cot, path: '{w}/late.tsv'}"],
     "data.sources.cot: {w}/late.tsv: line 9: 4 tab-separated field(s), expected 3"),
    (["data.sources.mathqa={format: mathqa, path: '{w}/math.json'}"],
     "data.sources.mathqa: {w}/math.json: row 8: missing field 'Rationale'"),
    (["data.sources.cot={format: flan_cot, path: '{w}/cot.jsonl'}"],
     "data.sources.cot: {w}/cot.jsonl: line 5: not valid JSON"),
    (["hub_mirror={w}/mirror", "data.sources.mathqa={format: mathqa, path: regisss/math_qa}"],
     "data.sources.mathqa: {w}/mirror/regisss/math_qa/default/train.jsonl: line 2: not valid JSON"),
    (["hub_mirror={w}/mirror", "eval.tasks=[mathqa_mc, bbh_fewshot_boolean_expressions]"],
     "hub_mirror: {w}/mirror/SaylorTwift/bbh/boolean_expressions/test.jsonl: line 3: not valid JSON"),
    (["-m", "seed=0,1", "data.sources.cot={format: flan_cot, path: '{w}/four.tsv'}"],
     "sweep job 1 of 2 (seed=0): data.sources.cot: {w}/four.tsv: line 1: 4 tab-separated field(s)"),
]


def _run(monkeypatch: pytest.MonkeyPatch, root: Path, args: list[str]) -> None:
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["dem-bench", *MICRO, *args, f"output_dir={root / 'out'}",
                                      f"cache_dir={root / 'cache'}"])


@pytest.mark.parametrize("overrides,expected", CASES,
                         ids=[" ".join(c.values[0] if hasattr(c, "values") else c[0]) for c in CASES])
def test_bad_input_stops_before_anything_is_created(work, monkeypatch, capsys, overrides, expected):
    args = [a.replace("{w}", str(work)) for a in overrides]
    _run(monkeypatch, work, args)
    monkeypatch.setattr(cli, "app", lambda: pytest.fail("bad input reached the Hydra app"))
    before = tree(work)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    line = _one_line(capsys, exit_info.value.code)
    assert expected.replace("{w}", str(work)) in line, line
    assert tree(work) == before


# ------------------------------------------------------------------------------------------------ data files


def test_a_good_source_is_read_in_full_once_and_remembered_by_its_hash(tmp_path, monkeypatch, capsys):
    """Every row of every file is checked before the run; once the run goes ahead the passes are written under
    cache_dir/checked, so the next run (a new process) only hashes the files. An edited file is checked again."""
    folder = tmp_path / "cot"
    folder.mkdir()
    write_tsv(folder / "a_train.tsv", cot_rows(8))
    write_tsv(folder / "b_train.tsv", cot_rows(6))
    args = [f"data.sources.cot={{format: flan_cot, path: '{folder}'}}"]
    started: list[str] = []
    monkeypatch.setattr(cli, "app", lambda: started.append("app"))
    _run(monkeypatch, tmp_path, args)
    monkeypatch.setattr(filecheck, "_PASSED", set())
    cli.main()
    assert started == ["app"]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "cache" / "checked").glob("*.json"))]
    assert sorted((r["file"], r["rows"]) for r in records if r["check"] == "rows:flan_cot") == [
        (str(folder / "a_train.tsv"), 8), (str(folder / "b_train.tsv"), 6)]

    def parse(*_: object, **__: object) -> None:
        raise AssertionError("a file that passed was parsed again")

    monkeypatch.setattr(filecheck, "_PASSED", set())  # a new process: only cache_dir remembers
    monkeypatch.setattr(filecheck, "read_rows", parse)
    _run(monkeypatch, tmp_path, args)
    cli.main()
    assert started == ["app", "app"]

    (folder / "b_train.tsv").write_text("q\ta\tr\nq\ta\n")  # edited: a new hash, checked again
    monkeypatch.undo()
    monkeypatch.setattr(cli, "app", lambda: pytest.fail("reached the app"))
    _run(monkeypatch, tmp_path, args)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert f"{folder / 'b_train.tsv'}: line 2: 2 tab-separated field(s), expected 3" in _one_line(
        capsys, exit_info.value.code)


def test_structure_of_each_file_kind(tmp_path):
    """JSON Lines, a JSON array, one JSON object over several lines, CSV with a header, Parquet and bytes that are
    not UTF-8: each parsed whole, each failure naming the line."""
    layout = filecheck.layout_of

    def error(name: str, text: str | bytes) -> str:
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(filecheck.DataFileError) as err:
            list(filecheck.read_rows(path, layout(path)))
        return str(err.value).removeprefix(f"{path}: ")

    assert error("a.jsonl", '{"a": 1}\n\n[1, 2]\n') == "line 3: an array; expected one JSON object per line"
    assert error("b.json", '[{"a": 1},\n "x"]') == "item 2 of the JSON array is a string; rows must be objects"
    assert error("c.json", '{\n "a": 1\n "b": 2\n}') == "line 3: not valid JSON (Expecting ',' delimiter at column 2)"
    assert error("d.csv", 'a,b\n1,"2\n') .startswith("line 2: not valid comma-separated text")
    assert error("e.jsonl", b'{"a": "x"}\n{"a": "\xff"}\n') == "line 2: not UTF-8 text (byte 0xff)"
    assert error("f.parquet", "not parquet").startswith("not a readable Parquet file")
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"Definition": ["d"], "Instances": [{"input": "i", "output": ["o"]}]}, indent=1))
    assert [r.data["Definition"] for r in filecheck.read_rows(task, layout(task))] == [["d"]]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": ["x", "y"]}), tmp_path / "g.parquet")
    assert [r.data for r in filecheck.read_rows(tmp_path / "g.parquet", layout(tmp_path / "g.parquet"))] == [
        {"a": "x"}, {"a": "y"}]


def test_sni_task_files_are_checked_instance_by_instance(tmp_path):
    from harness.sources import SourceConfig, get_format
    from tests.test_sources import sni_task

    task = sni_task("task001", 30)
    task["Instances"][25]["output"] = []
    path = write_json(tmp_path / "task001.json", task)
    with pytest.raises(filecheck.DataFileError) as err:
        filecheck.check_source_file(path, get_format("sni"), SourceConfig(format="sni", path=str(path)))
    assert str(err.value) == f"{path}: Instances[25]: missing field 'output'"
