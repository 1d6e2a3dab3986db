"""Executors run the training runs a comparison planned. The runs are independent, and each is a JSON-able
`RunSpec` trained into the locked cache by `harness.runs.spec.execute`, so any engine can run them — this process
(`local`), or submitit jobs on this machine (`submitit_local`) or on a SLURM cluster (`slurm`) — and the pipeline
continues with selection, search and evaluation once they are all in the cache. No home-made scheduler: submitit
submits, SLURM schedules, the file-locked cache makes concurrent jobs safe.

Parallel jobs on one machine share its cores: each run sets torch's threads to `executor.threads_per_run`
(default: the cores divided by the runs at once), because oversubscribed threads make a step ~20x slower here.
`executor.nproc_per_node > 1` trains each run data-parallel with `torchrun` (harness/runs/train_run.py).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from harness.errors import HarnessError
from harness.runs.cache import Entry, RunCache
from harness.runs.spec import RunSpec, execute
from harness.runs.stopwatch import stage

log = logging.getLogger(__name__)


class ExecutorError(HarnessError, RuntimeError):
    """A training job failed; the message names it and its log. Nothing is marked complete for it."""


def _eta(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def cores() -> int:
    """Cores this process may use (the affinity mask, as a container or SLURM sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_run(cfg: DictConfig) -> int:
    """torch threads for each run: as configured, or the cores divided by the runs that go at once."""
    return cfg.threads_per_run or max(1, cores() // max(1, cfg.max_parallel if cfg.name != "local" else 1))


def train_job(spec_json: str, cache_root: str, threads: int, nproc_per_node: int = 1) -> str:
    """What one job does: train one RunSpec into the cache (with `threads` torch threads, or data-parallel over
    `nproc_per_node` processes through torchrun); returns the entry's key. Module-level, so submitit can pickle it."""
    import torch

    spec = RunSpec.from_json(spec_json)
    if nproc_per_node > 1:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(spec_json)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
               "-m", "harness.runs.train_run", f.name, cache_root]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        try:
            subprocess.run(cmd, check=True, env=env)
        finally:
            os.unlink(f.name)
        entry = RunCache(cache_root).get("train", spec.key)
        if entry is None:
            raise ExecutorError(f"run {spec.label}: torchrun finished but left no valid cache entry train/{spec.key}")
        return spec.key
    torch.set_num_threads(threads)
    return execute(spec, cache_root).record["key"]


class LocalExecutor:
    """Every run in this process, one after another (the default)."""

    def __init__(self, threads: int | None = None, nproc_per_node: int = 1) -> None:
        self.threads, self.nproc_per_node = threads, nproc_per_node

    def run(self, runs: Sequence[tuple[str, RunSpec]], cache_root: Path) -> dict[str, Entry]:
        """Train (or find in the cache) each (arm, spec); log `run k/N (arm, mixture) tokens, elapsed, ETA`."""
        import torch

        done: dict[str, Entry] = {}
        start = time.perf_counter()
        trained_tokens, trained_s = 0, 0.0
        remaining = sum(spec.train_tokens for _, spec in runs)
        previous = torch.get_num_threads()
        for k, (arm, spec) in enumerate(runs, start=1):
            eta = _eta(trained_s / trained_tokens * remaining) if trained_tokens else "?"
            log.info("run %d/%d (%s, %s) %d tokens, elapsed %s, ETA %s", k, len(runs), arm, spec.label,
                     spec.train_tokens, _eta(time.perf_counter() - start), eta)
            t = time.perf_counter()
            if self.nproc_per_node > 1:  # data-parallel through torchrun, which writes the cache entry
                hit = RunCache(cache_root).get("train", spec.key) is not None
                train_job(spec.to_json(), str(cache_root), self.threads or previous, self.nproc_per_node)
                found = RunCache(cache_root).get("train", spec.key)
                assert found is not None  # train_job raised otherwise
                entry = Entry(found.path, found.record, hit)
            else:
                if self.threads:
                    torch.set_num_threads(self.threads)
                try:
                    with stage(f"train {spec.label}"):
                        entry = execute(spec, cache_root)
                finally:
                    torch.set_num_threads(previous)
            remaining -= spec.train_tokens
            if not entry.hit:
                trained_tokens += spec.train_tokens
                trained_s += time.perf_counter() - t
            done[spec.key] = entry
        return done


class SubmititExecutor:
    """Each run a submitit job — on this machine (`cluster="local"`) or SLURM — at most `max_parallel` at once;
    waits with a progress line; a failed job stops the comparison with its log path, and a rerun resumes (runs
    that finished are cache hits, so only the rest are submitted again)."""

    def __init__(self, cfg: DictConfig, cache_root: Path) -> None:
        import submitit

        self.cfg = cfg
        cluster = "local" if cfg.name == "submitit_local" else "slurm"
        self.executor = submitit.AutoExecutor(folder=str(Path(cfg.folder).expanduser()), cluster=cluster)
        self.executor.update_parameters(**submission_parameters(cfg))
        self.threads = threads_per_run(cfg)

    def run(self, runs: Sequence[tuple[str, RunSpec]], cache_root: Path) -> dict[str, Entry]:
        cache = RunCache(cache_root)
        done: dict[str, Entry] = {}
        pending = []
        for arm, spec in runs:  # runs already in the cache need no job
            entry = cache.get("train", spec.key)
            if entry is not None:
                done[spec.key] = entry
            else:
                pending.append((arm, spec))
        total, start = len(pending), time.perf_counter()
        running: dict[Any, tuple[str, RunSpec]] = {}
        finished = 0
        while pending or running:
            while pending and len(running) < self.cfg.max_parallel:
                arm, spec = pending.pop(0)
                job = self.executor.submit(train_job, spec.to_json(), str(cache_root), self.threads,
                                           self.cfg.nproc_per_node)
                log.info("submitted run (%s, %s) as job %s", arm, spec.label, job.job_id)
                running[job] = (arm, spec)
            for job in [j for j in running if j.done()]:
                arm, spec = running.pop(job)
                try:
                    job.result()
                except Exception as err:  # submitit re-raises the job's own failure, any type
                    for other in running:
                        other.cancel(check=False)
                    errors = [line.strip() for line in str(err).splitlines()  # the job's own exception line
                              if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line.strip())]
                    reason = errors[-1][:200] if errors else type(err).__name__
                    raise ExecutorError(f"training job {job.job_id} for run ({arm}, {spec.label}) failed ({reason}); "
                                        f"log: {job.paths.stderr}") from None
                entry = cache.get("train", spec.key)
                if entry is None:
                    raise ExecutorError(f"job {job.job_id} for run ({arm}, {spec.label}) left no valid cache entry; "
                                        f"log: {job.paths.stderr}")
                done[spec.key] = Entry(entry.path, entry.record, hit=False)
                finished += 1
                elapsed = time.perf_counter() - start
                log.info("runs: %d/%d done, %d running (%s), elapsed %s, ETA %s", finished, total, len(running),
                         self.cfg.name, _eta(elapsed), _eta(elapsed / finished * (total - finished)))
            if running:
                time.sleep(self.cfg.poll_s)
        return done


def submission_parameters(cfg: DictConfig) -> dict[str, Any]:
    """submitit's parameters for the configured executor (what a SLURM submission will ask for)."""
    params: dict[str, Any] = {"timeout_min": cfg.timeout_min, "cpus_per_task": cfg.cpus_per_task,
                              "name": "dem-bench-train"}
    if cfg.name == "slurm":
        params |= {"slurm_partition": cfg.partition, "gpus_per_node": cfg.gpus_per_node, "mem_gb": cfg.mem_gb,
                   "slurm_array_parallelism": cfg.max_parallel}
        if cfg.account:
            params["slurm_account"] = cfg.account
        if cfg.qos:
            params["slurm_qos"] = cfg.qos
        if cfg.additional_parameters:
            params["slurm_additional_parameters"] = dict(cfg.additional_parameters)
    return params


def make_executor(cfg: DictConfig, cache_root: Path) -> LocalExecutor | SubmititExecutor:
    if cfg.name == "local":
        return LocalExecutor(cfg.threads_per_run, cfg.nproc_per_node)
    return SubmititExecutor(cfg, cache_root)
