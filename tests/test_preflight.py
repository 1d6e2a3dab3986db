"""Every input checked before anything is created: data files read in full (every row, exact columns, mirrored
evaluation files too), model folders that cannot be a causal LM, devices, schedulers and storage folders that are
not there, generation parameters, plan_only in sweeps, and messages that say what type or name is wanted.

Each CLI case calls `main()` in-process (every check runs before Hydra starts) and asserts exit code 2, one line,
and nothing created or altered anywhere under the working folder (its whole tree hashed before and after)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, T5Config

import harness.__main__ as cli
from harness.data import filecheck
from tests.conftest import MICRO, compose_cfg
from tests.fixtures_hub import write_mirror
from tests.test_bad_input import _one_line, tree
from tests.test_sources import cot_rows, mathqa_rows, write_json, write_jsonl, write_tsv


def _tiny_checkpoint(folder: Path, config: object) -> Path:
    """A config.json and a safetensors file: all the checks before a run read (no weights are loaded)."""
    folder.mkdir()
    config.save_pretrained(folder)
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


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
    _tiny_checkpoint(root / "t5", T5Config(d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4, vocab_size=32))
    _tiny_checkpoint(root / "no_tokenizer", LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
                                                        num_hidden_layers=1, num_attention_heads=2))
    return root


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
NO_SLURM = pytest.mark.skipif(shutil.which("srun") is not None, reason="checks the message off a SLURM cluster")

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
    # models, devices, clusters, storage
    (["model=hf", "model.name_or_path={w}/t5"], "model.name_or_path={w}/t5: a T5Config (model_type 't5') is not a "
                                                "causal LM"),
    (["model=hf", "model.name_or_path={w}/no_tokenizer"], "model.name_or_path={w}/no_tokenizer: the folder has no "
                                                          "tokenizer files (tokenizer.json"),
    pytest.param(["model.device=cuda:0"], "model.device=cuda:0: no CUDA device is visible", marks=NO_GPU),
    (["model.device=cuda:x"], "model.device=cuda:x: not a device name; use auto, cpu, cuda or cuda:N"),
    pytest.param(["executor=slurm", "executor.partition=gpu"], "executor=slurm: SLURM's sbatch, srun, sacct, "
                                                                "scancel not found on PATH", marks=NO_SLURM),
    pytest.param(["-m", "seed=0,1", "hydra/launcher=submitit_slurm"], "hydra/launcher=submitit_slurm: SLURM's",
                 marks=NO_SLURM),
    (["dem.storage=sqlite:////nonexistent/dir/study.db"],
     "dem.storage=sqlite:////nonexistent/dir/study.db: folder /nonexistent/dir does not exist"),
    (["dem.storage=sqlite:///{w}/no/dir/study.db"], "folder {w}/no/dir does not exist"),
    (["dem.storage=sqlite:///{w}/mirror"], "{w}/mirror is a folder, not a database file"),
    # generation parameters
    (["eval.gen_kwargs={temprature: 0.5}"], "eval.gen_kwargs: unknown generation parameter 'temprature'. Did you "
                                            "mean 'temperature'?"),
    (["eval.gen_kwargs={max_gen_toks: -1}"], "eval.gen_kwargs.max_gen_toks=-1: must be an integer >= 1"),
    (["eval.gen_kwargs={until: 3}"], "eval.gen_kwargs.until=3: must be a string or a list of strings"),
    (["eval.gen_kwargs={top_p: 1.5, do_sample: true}"], "eval.gen_kwargs.top_p=1.5: must be a number in (0, 1]"),
    # plan_only is one setting for a sweep
    (["-m", "plan_only=true,false"], "plan_only: set it for the whole sweep"),
    # messages that say what to do
    (["eval.limit=1.5"], "eval.limit=1.5: must be an integer or null, not a decimal number"),
    (["seeds.search=[0,1,2]"], "seeds.search=[0,1,2]: must be an integer, not a list"),
    (["dem.weight_range=[a,b]"], "dem.weight_range=[a,b]: must be a list of numbers (item [0] is a string)"),
    (["hub_mirror={w}/mirorr", "data.sources.mathqa={format: mathqa, path: regisss/math_qa}"],
     "hub_mirror={w}/mirorr: no such folder. Did you mean '{w}/mirror'?"),
    (["data.distributions=[mathqa, mine]", "data.sources.mine.pth=/x.json"],
     "unknown key 'data.sources.mine.pth'. Did you mean 'data.sources.mine.path'?"),
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
    from harness.config import SourceConfig
    from harness.data.sources import check_source_file, get_format
    from tests.test_sources import sni_task

    task = sni_task("task001", 30)
    task["Instances"][25]["output"] = []
    path = write_json(tmp_path / "task001.json", task)
    with pytest.raises(filecheck.DataFileError) as err:
        check_source_file(path, get_format("sni"), SourceConfig(format="sni", path=str(path)))
    assert str(err.value) == f"{path}: Instances[25]: missing field 'output'"


# ------------------------------------------------------------------------------------------------ models, cache


def test_a_cuda_index_past_the_devices_is_refused(monkeypatch):
    """The index is checked against the devices there are (simulated: one visible GPU)."""
    from harness.models.loading import ModelSourceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ModelSourceError, match=r"model.device=cuda:1: this machine has 1 CUDA device\(s\) \(cuda:0 "
                                               r"to cuda:0\)"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cuda_index_past_the_devices_is_refused_on_a_gpu_machine():
    from harness.models.loading import ModelSourceError, resolve_device

    count = torch.cuda.device_count()
    assert resolve_device(f"cuda:{count - 1}").index == count - 1
    with pytest.raises(ModelSourceError, match=f"this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_a_failed_build_leaves_nothing_in_the_cache(tmp_path):
    from harness.runs.cache import RunCache

    def build(folder: Path) -> dict:
        (folder / "model.safetensors").write_bytes(b"half a checkpoint")
        raise AssertionError("Torch not compiled with CUDA enabled")

    cache = RunCache(tmp_path / "cache")
    with pytest.raises(AssertionError):
        cache.get_or_create("base", {"device": "cuda:0"}, build)
    assert list(tmp_path.iterdir()) == []  # no temporary folder, no lock, no cache folder
    (tmp_path / "cache" / "base").mkdir(parents=True)  # a cache in use: its folders and locks stay
    with pytest.raises(AssertionError):
        cache.get_or_create("base", {"device": "cuda:0"}, build)
    assert not list((tmp_path / "cache" / "base").glob(".*.tmp-*"))


# ------------------------------------------------------------------------------------------------ sweeps, names


def test_plan_only_under_a_sweep_prints_each_plan_and_the_total_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "app", lambda: pytest.fail("plan_only ran the sweep"))
    _run(monkeypatch, tmp_path, ["-m", "plan_only=true", "mixing.grid_step=1", "dem.n_trials=2,3"])
    before = tree(tmp_path)
    cli.main()
    out = capsys.readouterr().out
    assert "sweep job 1 of 2 (dem.n_trials=2):" in out and "sweep job 2 of 2 (dem.n_trials=3):" in out
    assert out.count("plan: 3 training run(s), 0 in the cache, 3 to train") == 2
    # both jobs train the same three runs (the search differs): the total counts them once
    assert "sweep: 2 job(s), 3 distinct training run(s) to train" in out and "nothing was created" in out
    assert tree(tmp_path) == before


def test_a_new_source_name_needs_no_plus(tmp_path, monkeypatch, capsys):
    """`data.sources.NEW=…` and `data.sources.NEW.path=…` add a source (Hydra's `+` could not: OmegaConf refused
    a new key in the typed mapping), for a plain run and for the Hydra app that composes sys.argv."""
    rows = write_json(tmp_path / "mine.json", mathqa_rows(6))
    _run(monkeypatch, tmp_path, [])
    monkeypatch.setattr(sys, "argv", ["dem-bench", "--cfg", "job", *MICRO, "data.distributions=[mathqa, mine]",
                                      f"data.sources.mine.path={rows}", "data.sources.mine.format=mathqa"])
    cli.main()  # Hydra's own --cfg job prints the composed config
    assert f"  mine:\n      format: mathqa\n      path: {rows}\n" in capsys.readouterr().out
    composed: list[list[str]] = []
    monkeypatch.setattr(cli, "app", lambda: composed.append(list(sys.argv[1:])))
    for args in ([f"data.sources.mine={{format: mathqa, path: '{rows}'}}"],
                 [f"data.sources.mine.path={rows}", "+data.sources.mine.format=mathqa"]):
        _run(monkeypatch, tmp_path, ["data.distributions=[mathqa, mine]", *args])
        cli.main()
        cfg = compose_cfg([a for a in composed[-1] if not a.startswith(("output_dir", "cache_dir"))])
        assert (cfg.data.sources.mine.format, cfg.data.sources.mine.path) == ("mathqa", str(rows))
        assert cfg.data.sources.sni.format == "builtin"  # the preset's other sources stay
