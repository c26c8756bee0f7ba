"""Spot-training metrics: what a ledger change emits, and the real thing on a StatsD socket.

The end-to-end check runs the real operator (local backend, a real training, a reclaim,
an escalation to on-demand) with Airflow's stats configured the way a deployment does
(``[metrics] statsd_on``, host 127.0.0.1, a free port) and reads the datagrams a StatsD
server would receive on loopback.
"""

from __future__ import annotations

import socket
import sys

import pytest
from airflow.sdk._shared.observability.metrics import stats
from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
from airflow.sdk.observability.metrics import stats_utils

from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.core.ledger import AttemptRecord, Escalation, RunLedger
from airflow_spot_training.metrics import backend_name, ledger_changes
from airflow_spot_training.operators.spot_training import SpotTrainingOperator
from tests.unit.operators.harness import TaskRun
from tests.unit.operators.test_spot_training_loop import TRAIN


def names(samples):
    return [(s.name, s.value, s.tags) for s in samples if s.kind == "incr"]


def ledger(*attempts: AttemptRecord, **fields) -> dict:
    return RunLedger(run_key="k", checkpoint_prefix="/ck", attempts=list(attempts),
                     prices={"spot": 0.3, "on_demand": 1.0}, **fields).to_dict()


class TestLedgerChanges:
    def test_first_save_emits_nothing(self):
        assert ledger_changes(None, ledger()) == []

    def test_launch_counts_an_attempt_once(self):
        launching = AttemptRecord(1, "spot", "t1", 1, launched_at=100.0)
        running = AttemptRecord(1, "spot", "t1", 1, outcome="running", launched_at=100.0)
        assert ledger_changes(ledger(), ledger(launching)) == []
        assert names(ledger_changes(ledger(launching), ledger(running))) == [
            ("spot_training.attempts", 1, {"capacity": "spot"})]
        assert ledger_changes(ledger(running), ledger(running)) == []

    def test_a_reclaim_counts_preemption_seconds_and_sets_the_totals(self):
        running = AttemptRecord(1, "spot", "t1", 1, outcome="running", launched_at=100.0, price_per_hour=0.3)
        reclaimed = AttemptRecord(1, "spot", "t1", 1, outcome="preempted", launched_at=100.0, started_at=100.0,
                                  ended_at=460.0, preemptions=1, price_per_hour=0.3)
        samples = ledger_changes(ledger(running), ledger(reclaimed))
        assert names(samples) == [
            ("spot_training.preemptions", 1, {"capacity": "spot"}),
            ("spot_training.attempt_ended", 1, {"capacity": "spot", "outcome": "preempted"}),
            ("spot_training.spot_seconds", 360, {}),
        ]
        gauges = {s.name: s.value for s in samples if s.kind == "gauge"}
        assert gauges["spot_training.cost_usd"] == pytest.approx(0.03)
        assert gauges["spot_training.saved_usd"] == pytest.approx(0.07)
        assert gauges["spot_training.saved_fraction"] == pytest.approx(0.7)
        assert gauges["spot_training.spot_share"] == 1.0

    def test_escalations_are_tagged_by_kind_and_waits_counted(self):
        before = ledger()
        after = ledger(
            escalations=[Escalation(2, 5.0, "on_demand", "2 preemption(s) reached the threshold max_preemptions=2")],
            decisions=[{"at": 1.0, "event": "capacity_unavailable", "action": "wait", "reason": "no spot",
                        "wait_seconds": 60}],
            spot_wait_seconds=61.0,
        )
        assert names(ledger_changes(before, after)) == [
            ("spot_training.escalations", 1, {"to": "on_demand", "reason": "preemptions"}),
            ("spot_training.capacity_waits", 1, {}),
            ("spot_training.capacity_wait_seconds", 61, {}),
        ]

    def test_in_place_interruptions_count_as_they_grow(self):
        once = AttemptRecord(1, "spot", "t", 1, outcome="running", preemptions=1)
        twice = AttemptRecord(1, "spot", "t", 1, outcome="running", preemptions=3)
        assert names(ledger_changes(ledger(once), ledger(twice))) == [
            ("spot_training.preemptions", 2, {"capacity": "spot"})]

    def test_refused_launch(self):
        launching = AttemptRecord(1, "spot", "t", 1)
        refused = AttemptRecord(1, "spot", "t", 1, outcome="capacity_unavailable", launched_at=1.0, ended_at=1.0)
        assert names(ledger_changes(ledger(launching), ledger(refused))) == [
            ("spot_training.capacity_unavailable", 1, {"capacity": "spot"})]

    def test_backend_name(self):
        assert backend_name(LocalBackend(command=["true"])) == "local"
        assert backend_name(object()) == "object"


@pytest.fixture
def statsd_listener(monkeypatch):
    """A UDP socket on loopback, and Airflow's stats configured to send to it (InfluxDB tags on)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    for key, value in {"STATSD_ON": "True", "STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(sock.getsockname()[1]),
                       "STATSD_PREFIX": "airflow", "STATSD_INFLUXDB_ENABLED": "True"}.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{key}", value)
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    yield sock
    stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram already delivered to the socket (loopback UDP arrives before sendto returns)."""
    lines = []
    sock.setblocking(False)
    while True:
        try:
            lines.extend(sock.recv(65535).decode().splitlines())
        except BlockingIOError:
            return lines


def parse(line: str) -> tuple[str, dict[str, str], str, str]:
    """``airflow.name,tag=v,...:value|type`` -> (name, tags, value, type)."""
    head, _, rest = line.partition(":")
    value, _, kind = rest.partition("|")
    name, *pairs = head.split(",")
    return name, dict(p.split("=", 1) for p in pairs), value, kind


def test_the_operator_emits_through_airflows_statsd(tmp_path, statsd_listener):
    backend = LocalBackend(command=[sys.executable, "-c", TRAIN], env={"MARKS": str(tmp_path), "STEPS": "40"},
                           state_dir=str(tmp_path / "state"), notice_seconds=0.5,
                           preemptions=step_preemptions([10]), spot_price_per_hour=0.3,
                           on_demand_price_per_hour=1.0)
    operator = SpotTrainingOperator(task_id="train", backend=backend, checkpoint_prefix=str(tmp_path / "ck"),
                                    max_preemptions=1, poll_interval=0.05)
    summary = TaskRun().run(operator)
    assert [a["capacity"] for a in summary["attempts"]] == ["spot", "on_demand"]

    metrics = [parse(line) for line in received(statsd_listener) if line.startswith("airflow.spot_training.")]
    for _, tags, _, _ in metrics:
        assert {"dag_id": "dag", "task_id": "train", "backend": "local"}.items() <= tags.items()
    counters = [(name, tags.get("capacity"), value) for name, tags, value, kind in metrics if kind == "c"]
    assert ("airflow.spot_training.attempts", "spot", "1") in counters
    assert ("airflow.spot_training.attempts", "on_demand", "1") in counters
    assert [c for c in counters if c[0] == "airflow.spot_training.preemptions"] == [
        ("airflow.spot_training.preemptions", "spot", "1")]
    escalations = [tags for name, tags, _, _ in metrics if name == "airflow.spot_training.escalations"]
    assert escalations == [{"dag_id": "dag", "task_id": "train", "backend": "local", "to": "on_demand",
                            "reason": "preemptions"}]
    ended = sorted((tags["capacity"], tags["outcome"]) for name, tags, _, _ in metrics
                   if name == "airflow.spot_training.attempt_ended")
    assert ended == [("on_demand", "succeeded"), ("spot", "preempted")]
    gauges = {name: float(value) for name, _, value, kind in metrics if kind == "g"}
    assert gauges["airflow.spot_training.saved_usd"] == pytest.approx(summary["savings"]["saved"], abs=1e-5)
    assert gauges["airflow.spot_training.cost_usd"] == pytest.approx(summary["cost"], abs=1e-5)
    assert gauges["airflow.spot_training.total_preemptions"] == 1
