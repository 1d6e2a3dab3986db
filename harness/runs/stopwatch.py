"""Where a comparison's wall time goes: named stages timed with `stage(name)`, nested, each reported by its own
(self) time, so the stages of one run add up to its whole (benchmarks/pipeline_profile.py prints them).

Code anywhere in the pipeline marks a stage with `with stage("search dem"):`; it costs nothing when no
`Stopwatch` is active (a context variable, as torch's `record_function` needs no profiler to be passed down). The
comparison writes the stages to `timings.json` beside summary.json, not into it: summaries of identical runs
compare equal, their timings never do.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_active: contextvars.ContextVar[Stopwatch | None] = contextvars.ContextVar("stopwatch", default=None)


@dataclass
class _Frame:
    name: str
    began: float
    children: float = 0.0  # seconds spent in stages nested inside this one


@dataclass
class Stopwatch:
    """The stages timed while it is active, in the order they ended: (name, self seconds, depth)."""

    stages: list[tuple[str, float, int]] = field(default_factory=list)
    _stack: list[_Frame] = field(default_factory=list)
    _token: Any = None
    _began: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._token, self._began = _active.set(self), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _active.reset(self._token)

    @property
    def total(self) -> float:
        return time.perf_counter() - self._began

    def add(self, name: str, seconds: float) -> None:
        """A stage timed elsewhere (a training job in another process, lm-eval's perturbed pass): counted as a
        child of the stage now running, so that stage's own time excludes it."""
        if self._stack:
            self._stack[-1].children += seconds
        self.stages.append((name, seconds, len(self._stack)))

    def timings(self) -> dict[str, Any]:
        """What timings.json holds: every stage's own seconds; what no stage covered is `other`."""
        total = self.total
        stages = [{"stage": n, "seconds": s, "depth": d} for n, s, d in self.stages]
        stages.append({"stage": "other", "seconds": max(0.0, total - sum(s for _, s, _ in self.stages)), "depth": 0})
        return {"total_s": total, "stages": stages}


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the enclosed code as stage `name` of the active stopwatch (none active: no-op)."""
    watch = _active.get()
    if watch is None:
        yield
        return
    frame = _Frame(name, time.perf_counter())
    watch._stack.append(frame)
    try:
        yield
    finally:
        watch._stack.pop()
        elapsed = time.perf_counter() - frame.began
        if watch._stack:
            watch._stack[-1].children += elapsed
        watch.stages.append((name, elapsed - frame.children, len(watch._stack)))


def record(name: str, seconds: float) -> None:
    """Add a stage timed elsewhere to the active stopwatch (none active: no-op)."""
    watch = _active.get()
    if watch is not None:
        watch.add(name, seconds)
