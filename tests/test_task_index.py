"""lm-eval's index of stock tasks kept on disk (harness/evaluation/task_index.py): what a second process reads is
exactly what lm-eval's TaskManager builds, and a damaged, stale or unwritable store never changes the answer."""

from __future__ import annotations

import json
import logging

import pytest

from harness.evaluation import task_index
from harness.evaluation.tasks import stock_manager


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One real build (lm-eval's TaskIndex.build over its task folder), stored in a fresh folder."""
    folder = tmp_path_factory.mktemp("index")
    return folder, task_index.load_or_build(folder)


def test_a_stored_index_reads_back_as_lm_eval_builds_it(stored, monkeypatch):
    folder, built = stored
    files = list(folder.glob("lm_eval_index-*.json"))
    assert [f.name for f in files] == [f"lm_eval_index-{task_index.fingerprint(task_index.tasks_root())}.json"]
    lm_eval_s = stock_manager().task_index  # the TaskManager evaluation builds tasks with (once per process)
    monkeypatch.setattr("lm_eval.tasks._index.TaskIndex.build", lambda *a, **k: pytest.fail("rebuilt"))
    read = task_index.load_or_build(folder)
    assert read == built == lm_eval_s
    assert {"mmlu", "bbh_fewshot", "boolq", "mathqa"} <= set(read)
    assert not list(folder.glob(".tmp-*"))


def test_a_damaged_store_is_rebuilt_and_replaced(stored, tmp_path, monkeypatch, caplog):
    _, built = stored
    calls = []
    monkeypatch.setattr("lm_eval.tasks._index.TaskIndex.build", lambda paths, **k: calls.append(paths) or built)
    path = tmp_path / f"lm_eval_index-{task_index.fingerprint(task_index.tasks_root())}.json"
    path.write_text('{"mmlu": {"name": "mmlu"')  # torn
    with caplog.at_level(logging.WARNING):
        assert task_index.load_or_build(tmp_path) == built
    assert len(calls) == 1 and "unreadable" in caplog.text
    assert task_index.load_or_build(tmp_path) == built and len(calls) == 1  # the rewritten store is read
    path.write_text(json.dumps({"mmlu": {"name": "mmlu", "kind": "NO_SUCH_KIND", "cfg": {}, "tags": [],
                                         "yaml_path": None}}))
    assert task_index.load_or_build(tmp_path) == built and len(calls) == 2


def test_a_changed_task_file_or_lm_eval_version_makes_a_new_key(stored, monkeypatch):
    folder, built = stored
    before = task_index.fingerprint(task_index.tasks_root())
    monkeypatch.setattr(task_index, "version", lambda package: "0.0.0-other")
    assert task_index.fingerprint(task_index.tasks_root()) != before
    calls = []
    monkeypatch.setattr("lm_eval.tasks._index.TaskIndex.build", lambda paths, **k: calls.append(paths) or built)
    assert task_index.load_or_build(folder) == built and len(calls) == 1
    # the store of the old key is removed once the new one is written: one index per folder
    assert [f.name for f in folder.glob("lm_eval_index-*.json")] == [
        f"lm_eval_index-{task_index.fingerprint(task_index.tasks_root())}.json"]


def test_the_key_follows_a_task_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t.yaml").write_text("task: t\n")
    (tmp_path / "a" / "notes.md").write_text("x")
    first = task_index.fingerprint(tmp_path)
    (tmp_path / "a" / "notes.md").write_text("changed")  # not a task file
    assert task_index.fingerprint(tmp_path) == first
    (tmp_path / "a" / "t.yaml").write_text("task: t2\n")
    assert task_index.fingerprint(tmp_path) != first


def test_an_unwritable_folder_still_answers_and_leaves_nothing(stored, tmp_path, monkeypatch):
    _, built = stored
    monkeypatch.setattr("lm_eval.tasks._index.TaskIndex.build", lambda paths, **k: built)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert task_index.load_or_build(blocker / "index") == built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
