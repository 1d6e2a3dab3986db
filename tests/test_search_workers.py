"""Several search workers on one Optuna study: spawned processes (search_parallel) or a worker run as its own job
(`python -m dem.search SPEC.json`), each rebuilding its MergeSession from the base folder and the vector files."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from dem.merge import MergeConfigError, get_strategy
from dem.search import (
    MergeSession,
    WorkerSpec,
    open_storage,
    search_parallel,
    storage_location,
    study_result,
    worker_specs,
)
from dem.vectors import distribution_vector, load_vectors, save_vector
from harness.data.builtin import generate_splits
from harness.data.tokens import encode, pack
from harness.evaluation.perplexity import perplexity
from harness.models.loading import copy_params

NAMES = ["mathqa", "cot"]


def _spec(micro_base, base_model, tokenizer, tmp_path, **kw):
    """Two saved distribution vectors of the micro base, its validation blocks, and a worker spec on a journal."""
    theta0 = copy_params(base_model)
    g = torch.Generator().manual_seed(0)
    records = [save_vector(distribution_vector(theta0, {k: v + 0.01 * torch.randn(v.shape, generator=g)
                                                         for k, v in theta0.items()}), tmp_path / f"{n}.safetensors")
               for n in NAMES]
    val = {n: pack([encode(tokenizer, e) for e in generate_splits(n, 0, 1, 16, 1).val], 64, tokenizer.pad_token_id,
                   drop_last=False) for n in NAMES}
    spec = WorkerSpec(base=str(micro_base[0]), vectors=[str(tmp_path / f"{n}.safetensors") for n in NAMES],
                      sha256=[r["sha256"] for r in records], merge="dem", fixed={}, names=NAMES,
                      storage=storage_location("journal", tmp_path / "study", tmp_path), study_name="s", n_trials=5,
                      sampler="tpe", weight_range=[0.0, 1.0], searched={}, seed=0)
    return dataclasses.replace(spec, **kw), val


def _fresh(spec: WorkerSpec) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=open_storage(spec.storage, repair=False))


def test_budget_is_split_exactly_and_threads_divided(micro_base, base_model, tokenizer, tmp_path):
    spec, _ = _spec(micro_base, base_model, tokenizer, tmp_path, n_trials=7)
    specs = worker_specs(spec, 3)
    assert [s.trials for s in specs] == [3, 2, 2] and [s.worker for s in specs] == [0, 1, 2]
    assert {s.threads for s in specs} == {max(1, torch.get_num_threads() // 3)}
    assert [s.trials for s in worker_specs(dataclasses.replace(spec, n_trials=1), 3)] == [1]  # idle workers dropped


def test_two_workers_finish_the_budget_once_each_and_report_the_studys_best(micro_base, base_model, tokenizer,
                                                                           tmp_path):
    spec, val = _spec(micro_base, base_model, tokenizer, tmp_path)
    killed = optuna.create_study(study_name="s", storage=open_storage(spec.storage, repair=False))
    killed.ask()  # a trial a killed search left RUNNING: no worker is alive, so the next search fails it
    seen = []
    result = search_parallel(spec, val, workers=2, on_trial=lambda i, w, p: seen.append((i, p)))

    study = _fresh(spec)  # read back from the journal, not from the parent's objects
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == 6
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert [t.state for t in study.trials[1:]] == [optuna.trial.TrialState.COMPLETE] * 5
    assert result["n_trials"] == 5 and result["n_pruned"] == 0 == result["n_infeasible"]
    best = study.best_trial
    assert result["best_trial"] == best.number and result["val_ppl"] == best.value
    assert result["weights"] == {n: best.params[f"w_{n}"] for n in NAMES}
    assert result["search_forward_tokens"] == 5 * sum(x.numel() for x, _ in val.values())
    assert [i for i, _ in seen] == numbers[1:] and min(p for _, p in seen) == result["val_ppl"]
    # both workers ran trials: the journal names the process that created each trial
    lines = [json.loads(line) for line in Path(spec.storage).read_text().splitlines()]
    creators = {r["worker_id"].rsplit("-", 1)[0] for r in lines if r["op_code"] == 4}  # CREATE_TRIAL
    assert len(creators) == 3  # the test's ask() and the two workers

    # the workers scored the merge they were asked for: the best weights give back its perplexity here
    session = MergeSession(base_model, load_vectors([tmp_path / f"{n}.safetensors" for n in NAMES], spec.sha256),
                           get_strategy("dem"), {})
    session.set([result["weights"][n] for n in NAMES], {})
    assert math.isclose(perplexity(base_model, val)["val_ppl"], result["val_ppl"], rel_tol=1e-4)


def test_a_worker_runs_as_its_own_job_from_a_spec_file(micro_base, base_model, tokenizer, tmp_path):
    spec, val = _spec(micro_base, base_model, tokenizer, tmp_path, n_trials=2, sampler="random")
    torch.save(val, tmp_path / "val.pt")
    (job,) = worker_specs(dataclasses.replace(spec, val=str(tmp_path / "val.pt")), workers=1)
    done = subprocess.run([sys.executable, "-m", "dem.search", str(job.save(tmp_path / "worker.json"))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"finished": [0, 1]}
    study = _fresh(spec)
    assert study_result(study, spec.space())["best_trial"] == study.best_trial.number


def test_memory_storage_cannot_be_shared_by_workers(micro_base, base_model, tokenizer, tmp_path):
    spec, val = _spec(micro_base, base_model, tokenizer, tmp_path, storage=None)
    with pytest.raises(MergeConfigError, match="memory lives in one process, so search workers cannot share it"):
        search_parallel(spec, val, workers=2)


CHILD = """
import multiprocessing, os, sys, time
from dem.search import die_with_parent

def child(parent, path):
    die_with_parent(parent)
    open(path, "w").write(str(os.getpid()))
    time.sleep(300)

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(), sys.argv[1])).start()
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\tZ" not in next(line for line in status.read_text().splitlines() if line.startswith("State:"))
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_spawned_worker_dies_with_its_search(tmp_path):
    """SIGKILL the search process and its spawned workers go too, so no worker is left writing to the study when
    the rerun fails the trials they left RUNNING."""
    (tmp_path / "search.py").write_text(CHILD)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "search.py"), str(tmp_path / "pid")])
    deadline = time.monotonic() + 120
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.2)
    worker = int((tmp_path / "pid").read_text())
    assert _alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its search"
        time.sleep(0.2)
