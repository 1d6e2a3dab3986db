"""The hub mirror: hub ids are answered from local files, everything else passes through, misses name the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest

from harness.data import mirror
from harness.data.mirror import MirrorError, hub_mirror
from harness.errors import ConfigError
from tests.fixtures_hub import MMLU_DEV, MMLU_TEST, write_mirror


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mirror(tmp_path_factory.mktemp("mirror"))


def test_whole_dataset_load_returns_every_split_with_hub_fields(root: Path):
    with hub_mirror(root):
        dd = datasets.load_dataset(path="cais/mmlu", name="abstract_algebra")  # lm-eval's call
    assert sorted(dd) == ["dev", "test"]
    assert dd["test"].num_rows == len(MMLU_TEST) and dd["dev"].num_rows == len(MMLU_DEV)
    assert dd["test"][0] == {"question": MMLU_TEST[0][0], "subject": "abstract_algebra",
                             "choices": MMLU_TEST[0][1], "answer": MMLU_TEST[0][2]}


def test_split_slices_lists_and_positional_args(root: Path):
    with hub_mirror(root):
        assert datasets.load_dataset("cais/mmlu", "abstract_algebra", split="test").num_rows == 4
        assert datasets.load_dataset("cais/mmlu", "abstract_algebra", split="test[:2]").num_rows == 2
        assert datasets.load_dataset("cais/mmlu", "abstract_algebra", split="test[:50%]+dev[:1]").num_rows == 3
        test, dev = datasets.load_dataset("cais/mmlu", "abstract_algebra", split=["test", "dev"])
        assert (test.num_rows, dev.num_rows) == (4, 5)
        assert datasets.load_dataset("cais/mmlu", "abstract_algebra", None, None, "dev").num_rows == 5


def test_kwargs_for_the_hub_files_are_dropped_and_no_config_means_default(root: Path):
    """The mirror holds parsed rows: which raw files (data_files, revision) and how to parse them (column_names,
    header) mean nothing for it; lm-eval passes such `dataset_kwargs` (e.g. mmlusr's CSVs) unchanged."""
    with hub_mirror(root):
        ds = datasets.load_dataset("regisss/math_qa", split="test", trust_remote_code=True, revision="main",
                                   token=None, data_dir="x", data_files={"test": "on/the/hub.csv"},
                                   column_names=["a", "b"], header=None, keep_in_memory=True)
    assert ds.num_rows == 3 and "Problem" in ds.column_names


def test_selecting_kwargs():
    kwargs = {"data_files": {"test": "x.csv"}, "header": None, "revision": "v1", "trust_remote_code": True,
              "streaming": False, "features": None}
    assert mirror.selecting_kwargs(kwargs) == {"data_files": {"test": "x.csv"}, "header": None, "revision": "v1"}


def test_missing_split_names_the_file(root: Path):
    expected = root / "cais/mmlu/abstract_algebra/validation.jsonl"
    with hub_mirror(root):
        with pytest.raises(MirrorError) as err:
            datasets.load_dataset("cais/mmlu", "abstract_algebra", split="validation")
        assert str(expected) in str(err.value) and "\n" not in str(err.value)
        dd = datasets.load_dataset("cais/mmlu", "abstract_algebra")
        with pytest.raises(MirrorError, match=r"validation\.jsonl"):  # lm-eval indexing a split the folder lacks
            dd["validation"]
    assert isinstance(err.value, ConfigError)  # the CLI turns it into one line and exit code 2


def test_missing_dataset_names_the_file(root: Path):
    expected = re.escape(str(root / "someone/absent/default/train.jsonl"))
    with hub_mirror(root), pytest.raises(MirrorError, match=expected):
        datasets.load_dataset("someone/absent", split="train")


def test_local_files_and_packaged_builders_pass_through(root: Path, tmp_path: Path):
    local = tmp_path / "rows.jsonl"
    local.write_text(json.dumps({"text": "a"}) + "\n")
    with hub_mirror(root):
        assert datasets.load_dataset("json", data_files=str(local), split="train")["text"] == ["a"]
        assert datasets.load_dataset(str(tmp_path), split="train")["text"] == ["a"]  # a local folder


def test_parquet_csv_and_mixed_formats(tmp_path: Path):
    folder = tmp_path / "org/data/default"
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict({"x": [1, 2]}).to_parquet(folder / "train.parquet")
    (folder / "test.csv").write_text("x\n3\n")
    with hub_mirror(tmp_path):
        dd = datasets.load_dataset("org/data")  # each split read with its own builder
        assert dd["train"]["x"] == [1, 2] and dd["test"]["x"] == [3]
        with pytest.raises(MirrorError, match="different formats"):
            datasets.load_dataset("org/data", split="train+test")


def test_restored_after_the_block_and_blocks_nest(root: Path, tmp_path: Path):
    original = datasets.load_dataset
    inner = write_mirror(tmp_path / "inner")
    (inner / "cais/mmlu/abstract_algebra/dev.jsonl").unlink()
    with hub_mirror(root):
        kept = datasets.load_dataset
        with hub_mirror(inner):
            with pytest.raises(MirrorError, match=re.escape(str(inner))):
                datasets.load_dataset("cais/mmlu", "abstract_algebra", split="dev")
        assert datasets.load_dataset("cais/mmlu", "abstract_algebra", split="dev").num_rows == 5
    assert datasets.load_dataset is original
    local = tmp_path / "rows.jsonl"
    local.write_text(json.dumps({"text": "a"}) + "\n")
    assert kept("json", data_files=str(local), split="train").num_rows == 1  # a stale reference: plain datasets


def test_none_is_a_no_op():
    original = datasets.load_dataset
    with hub_mirror(None):
        assert datasets.load_dataset is original


@pytest.mark.parametrize(("path", "hub"), [("cais/mmlu", True), ("gsm8k", True), ("json", False),
                                           ("parquet", False), ("/abs/file.jsonl", False), ("./rel", False),
                                           ("https://host/x.json", False), ("a/b/c.jsonl", False)])
def test_is_hub_id(path: str, hub: bool):
    assert mirror.is_hub_id(path) is hub


def test_split_names():
    assert mirror.split_names("train[:10%]+test") == ["train", "test"]
    assert mirror.split_names(["validation", "test[3:]"]) == ["validation", "test"]
    assert mirror.split_names(None) == []


def test_fill_writes_the_layout_and_skips_what_exists(root: Path, tmp_path: Path):
    """`fill` on a networked machine; here the 'hub' is the fixture mirror itself."""
    wanted = [("cais/mmlu", "abstract_algebra", ("test", "dev")), ("regisss/math_qa", None, ("test",))]
    with hub_mirror(root):
        written = mirror.fill(tmp_path, wanted)
        assert mirror.fill(tmp_path, wanted) == []
        parquet = mirror.fill(tmp_path / "pq", wanted[1:], fmt="parquet")
    mmlu = tmp_path / "cais/mmlu/abstract_algebra"
    assert written == [mmlu / "test.jsonl", mmlu / "dev.jsonl", tmp_path / "regisss/math_qa/default/test.jsonl"]
    assert parquet == [tmp_path / "pq/regisss/math_qa/default/test.parquet"]
    original = mirror.load(root, "cais/mmlu", "abstract_algebra", split="test")
    assert mirror.load(tmp_path, "cais/mmlu", "abstract_algebra", split="test").to_list() == original.to_list()


def test_fill_passes_a_tasks_row_selecting_kwargs(tmp_path: Path):
    calls = []

    def loader(path, name, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"x": [1]})

    mirror.fill(tmp_path, [("org/data", None, ("test",), ("some_task",), {"data_files": {"test": "t.csv"}})],
                loader=loader)
    assert calls == [("org/data", None, {"split": "test", "data_files": {"test": "t.csv"}})]
    assert (tmp_path / "org/data/default/test.jsonl").read_text() == '{"x":1}\n'
