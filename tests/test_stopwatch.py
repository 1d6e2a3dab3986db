"""The stage timer behind timings.json and benchmarks/pipeline_profile.py: nested stages report their own time,
so the stages of a run add up to its whole; without an active stopwatch, marking a stage does nothing."""

from __future__ import annotations

import time

import pytest

from harness.runs.stopwatch import Stopwatch, record, stage


def test_nested_stages_count_their_own_time_and_add_up_to_the_whole():
    with Stopwatch() as watch:
        with stage("outer"):
            time.sleep(0.05)
            with stage("inner"):
                time.sleep(0.1)
            record("elsewhere", 0.02)  # timed in another process: taken out of the outer stage's own time
    seconds = {s["stage"]: s["seconds"] for s in watch.timings()["stages"]}
    assert seconds["inner"] == pytest.approx(0.1, abs=0.03)
    assert seconds["outer"] == pytest.approx(0.05 - 0.02, abs=0.03)
    assert seconds["elsewhere"] == 0.02
    timings = watch.timings()
    assert sum(s["seconds"] for s in timings["stages"]) == pytest.approx(timings["total_s"], rel=1e-3)
    assert [(s["stage"], s["depth"]) for s in timings["stages"]][:3] == [("inner", 1), ("elsewhere", 1), ("outer", 0)]


def test_without_a_stopwatch_stages_cost_nothing_and_record_nothing():
    with stage("alone"):
        record("nothing", 1.0)
    with Stopwatch() as watch:
        pass
    assert [s["stage"] for s in watch.timings()["stages"]] == ["other"]
