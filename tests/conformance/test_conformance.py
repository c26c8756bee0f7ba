"""The backend conformance suite: every scenario on all five backends.

Each scenario drives the real ``SpotTrainingOperator`` through the in-process task runner
(:mod:`tests.conformance.harness`), with a real training process on each attempt's machine
(:mod:`tests.conformance.clouds`), and asserts three things: the ledger (the task's result
and the ledger in the task state store), the calls the backend made to its cloud, and
what is still alive at the end. The steps a training really computed come from its own
log lines, never from the ledger.

A scenario that a backend fails today is marked ``xfail(strict=True)`` with the defect
in one line (the table :data:`KNOWN`); a fix turns it into an XPASS, which fails the
suite until the mark is removed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.clouds import BACKENDS, Cloud, Training
from tests.conformance.fleet import recomputed, executed_steps
from tests.conformance.harness import TaskRun

#: scenario -> backend -> the defect that makes it fail today
KNOWN: dict[str, dict[str, str]] = {
    "reclaim_after_notice": {
        "ec2": "the bootstrap writes exit 143 and shuts down (Client.InstanceInitiatedShutdown): recorded as failed",
    },
}


def backends(scenario: str, only: list[str] | None = None) -> list[Any]:
    """The backends a scenario runs on, with the known failures marked."""
    params = []
    for name in only or BACKENDS:
        reason = KNOWN.get(scenario, {}).get(name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def attempts(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["capacity"], a["outcome"]) for a in summary["attempts"]]


def assert_nothing_left(cloud: Cloud) -> None:
    cloud.settle()
    assert cloud.live_resources() == 0 and cloud.live_processes() == 0


@pytest.mark.parametrize("cloud", backends("reclaim_after_notice"), indirect=True)
def test_a_reclaim_after_the_notice_is_a_preemption_and_escalates_at_the_threshold(cloud: Cloud) -> None:
    """The guide's pattern: notice caught, emergency checkpoint, exit 143 -> a counted preemption."""
    training = Training(steps=12, every=4)
    cloud.reclaim(attempt=1, when=r"^step 6 ")
    run = TaskRun()
    outcome = run.run_try(cloud.operator(training, cloud.prefix(), max_preemptions=1))

    assert outcome.error is None, outcome.error
    summary = outcome.result
    assert attempts(summary) == [("spot", "preempted"), ("on_demand", "succeeded")]
    assert summary["preemptions"] == 1
    assert [e["to"] for e in summary["escalations"]] == ["on_demand"]
    assert "max_preemptions=1" in summary["escalations"][0]["reason"]
    logs = cloud.logs()
    assert recomputed(logs) == 0 and summary["recomputed_steps"] == 0  # the emergency checkpoint kept every step
    assert set(executed_steps(logs)) == set(range(1, 13))
    second_start = summary["attempts"][1]["start_step"]
    assert second_start is not None and second_start >= 6  # resumed from the emergency checkpoint
    assert summary["final_checkpoint_step"] == 12
    calls = cloud.recorded_calls()
    assert calls.launches == ["spot", "on_demand"]
    assert_nothing_left(cloud)
