"""Pool health on Compute Engine, through the real operator, trigger and google-cloud-compute client
against the loopback fake: a zone that reclaimed an attempt is tried last by the next launch."""

from __future__ import annotations

import pytest

from airflow_spot_training.operators.spot_training import LEDGER_KEY
from tests.e2e.operator_harness import TaskStateStore, run_try
from tests.e2e.test_compute_engine_operator import TOTAL, VM, make_operator
from tests.fakes.gce_server import GCEServer


@pytest.fixture
def server():
    with GCEServer() as s:
        yield s


@pytest.mark.parametrize("cooldown, second_zone", [(1800, "us-central1-b"), (0, "us-central1-a")])
def test_the_zone_that_reclaimed_attempt_1_is_skipped_by_attempt_2(server, tmp_path, cooldown, second_zone):
    vm = VM(server)

    def cloud(deferred):
        if deferred.trigger.attempt == 1:
            vm.train(until=100)
            server.fake.preempt(vm.last()[0])
        else:
            vm.train(until=TOTAL)
            vm.finish(0)

    store = TaskStateStore()
    operator = make_operator(server, f"file://{tmp_path / 'ckpt'}", max_preemptions=3, pool_cooldown=cooldown)
    summary = run_try(operator, store, 1, on_defer=cloud).result

    assert summary["outcome"] == "succeeded"
    assert [(a["capacity"], a["outcome"], a["pool"]) for a in summary["attempts"]] == [
        ("spot", "preempted", "us-central1-a"), ("spot", "succeeded", second_zone)]
    # the second insert went straight to its zone: nothing was tried in the cooling one
    assert [r.path.split("/")[6] for r in server.fake.inserts()] == ["us-central1-a", second_zone]
    if cooldown:
        reason = store.get(LEDGER_KEY)["attempts"][1]["pool_reason"]
        assert reason.startswith("us-central1-b first: no reclaim or capacity miss in the window; "
                                 "us-central1-a: reclaimed an attempt")
