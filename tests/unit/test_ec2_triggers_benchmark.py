"""The trigger benchmark's worst-phase arithmetic, on a server log written by hand."""

from __future__ import annotations

import pytest

from benchmarks.ec2_triggers import worst_phase_detections, worst_phase_seconds


def test_worst_phase_runs_from_the_read_before_the_reclaim_less_a_wait_behind_it(tmp_path):
    count_file = tmp_path / "describe-calls"
    (tmp_path / "describe-calls.reads").write_text(
        "10.000000 0.000000 i-a,i-x\n"
        "10.100000 0.000000 i-b\n"
        "15.000000 0.000000 i-a,i-x\n"   # sees i-a's reclaim (done at 12.0)
        "15.400000 0.300000 i-b\n"       # waited 0.3 s behind i-b's reclaim (done at 15.1)
        "20.000000 0.000000 i-a,i-b\n")
    reclaimed = {"i-a": 12.0, "i-b": 15.1}
    detected = {"i-a": 15.3, "i-b": 15.6}
    assert worst_phase_detections(count_file, reclaimed, detected) == pytest.approx([5.3, 5.2])


def test_worst_phase_to_launch_request_adds_the_slowest_own_paths():
    result = {"interval_s": 5.0, "worst_phase_detection_s": {"max": 5.4},
              "detection_to_event_s": {"max": 0.02}, "event_to_launch_request_s": {"max": 0.1}}
    assert worst_phase_seconds(result) == pytest.approx(5.52)
    # results saved before the read log: the interval plus the slowest tick start -> detection
    del result["worst_phase_detection_s"]
    result.update(shared_call_s={"max": 0.4}, tick_start_to_detection_s={"max": 0.98})
    assert worst_phase_seconds(result) == pytest.approx(5.0 + 0.98 + 0.12)
