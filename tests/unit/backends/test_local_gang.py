"""LocalBackend gangs: N processes, each told its rank; one node lost stops the whole gang."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_spot_training.backends.base import LaunchRequest
from airflow_spot_training.backends.local import LocalBackend, _alive, fixed_preemptions, request_preemption
from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.policy import Capacity
from tests.unit.backends.test_local import _wait_final, _wait_for_file

# Writes what the contract told it, then runs until told to stop (exit 143) or fails on request.
NODE = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from airflow_spot_training.runtime import read_contract
    c = read_contract()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    told = {"rank": c.node_rank, "nodes": c.num_nodes, "master": f"{c.master_addr}:{c.master_port}",
            "torch": [os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")],
            "pid": os.getpid()}
    open(os.environ["MARKS"] + f"/node-{c.node_rank}.json", "w").write(json.dumps(told))
    if os.environ.get("FAIL_RANK") == str(c.node_rank):  # once every node is up, with its handler set
        while not all(os.path.exists(os.environ["MARKS"] + f"/node-{r}.json") for r in range(c.num_nodes)):
            time.sleep(0.02)
        sys.exit(7)
    end = time.time() + float(os.environ.get("RUN_SECONDS", "60"))
    while time.time() < end and not stop:
        time.sleep(0.02)
    if stop:
        open(os.environ["MARKS"] + f"/noticed-{c.node_rank}", "w").close()
    sys.exit(143 if stop else 0)
    """
)


def _gang(tmp_path: Path, nodes: int = 3, preemptions=None, **env: str) -> tuple[LocalBackend, LaunchRequest]:
    backend = LocalBackend(command=[sys.executable, "-c", NODE], env={"MARKS": str(tmp_path), **env},
                           state_dir=str(tmp_path / "state"), notice_seconds=5, preemptions=preemptions)
    contract = Contract(str(tmp_path / "ck"), 1, "spot", 0, "gang", num_nodes=nodes)
    return backend, LaunchRequest(contract=contract, capacity=Capacity.SPOT, token="gang-a1")


def _told(tmp_path: Path, nodes: int) -> list[dict]:
    for rank in range(nodes):
        _wait_for_file(tmp_path / f"node-{rank}.json")
    return [json.loads((tmp_path / f"node-{rank}.json").read_text()) for rank in range(nodes)]


class TestLocalGang:
    def test_every_node_is_told_its_rank_and_where_rank_0_listens(self, tmp_path):
        backend, request = _gang(tmp_path, RUN_SECONDS="0.2")
        handle = backend.launch(request)
        assert _wait_final(backend, handle).state == "succeeded"
        told = _told(tmp_path, 3)
        assert [t["rank"] for t in told] == [0, 1, 2] and {t["nodes"] for t in told} == {3}
        assert len({t["master"] for t in told}) == 1 and told[0]["master"].startswith("127.0.0.1:")
        host, port = told[0]["master"].split(":")
        assert [t["torch"] for t in told] == [[str(r), "3", "0", host, port] for r in range(3)]

    @pytest.mark.parametrize("notice, lost_code", [(0, -9), (5, 143)], ids=["hard-kill", "with-notice"])
    def test_one_node_reclaimed_stops_the_gang_as_one_preemption(self, tmp_path, notice, lost_code):
        # the schedule never reclaims by itself; its notice_seconds says how the injected reclaim comes
        backend, request = _gang(tmp_path, preemptions=fixed_preemptions([None], notice_seconds=[notice]))
        handle = backend.launch(request)
        told = _told(tmp_path, 3)
        assert request_preemption(handle.attempt_dir, node=1)
        status = _wait_final(backend, handle)
        assert status.state == "preempted" and status.preemptions == 1
        # the reclaimed node went (killed, or after its notice); the survivors got the notice then
        assert status.details["exit_codes"] == [143, lost_code, 143]
        assert (tmp_path / "noticed-0").exists() and (tmp_path / "noticed-2").exists()
        assert not any(_alive(t["pid"]) for t in told)

    def test_a_node_that_fails_stops_the_others_and_is_named(self, tmp_path):
        backend, request = _gang(tmp_path, FAIL_RANK="2")
        handle = backend.launch(request)
        status = _wait_final(backend, handle)
        assert status.state == "failed"
        assert status.reason.startswith("node 2 of 3: training exited with code 7")
        assert (tmp_path / "noticed-0").exists() and (tmp_path / "noticed-1").exists()

    def test_stop_ends_every_node(self, tmp_path):
        backend, request = _gang(tmp_path, nodes=2)
        handle = backend.launch(request)
        told = _told(tmp_path, 2)
        backend.stop(handle)
        assert backend.describe(handle).state == "stopped"
        assert not any(_alive(t["pid"]) for t in told)
