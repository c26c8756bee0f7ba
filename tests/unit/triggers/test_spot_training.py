"""SpotTrainingTrigger: serialization round trip, events from a real local attempt, kill vs cleanup."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import textwrap
import threading

import pytest

from airflow_spot_training.backends.base import LaunchRequest
from airflow_spot_training.backends.local import LocalBackend, _alive, request_preemption
from airflow_spot_training.core.attempt import AttemptEvent, AttemptState, EventKind, UnknownVersionError
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.triggers import spot_training as trigger_module
from airflow_spot_training.triggers.spot_training import SpotTrainingTrigger

# Commits checkpoints 1..N through the real CheckpointManager, one every 0.1 s.
TRAIN = textwrap.dedent(
    """
    import os, signal, sys, time
    from airflow_spot_training.runtime import CheckpointManager, read_contract
    c = read_contract()
    m = CheckpointManager(c.checkpoint_uri)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    start = (m.latest().step if m.latest() else 0)
    for step in range(start + 1, int(os.environ.get("STEPS", "5")) + 1):
        time.sleep(0.1)
        m.save(step, {"w.bin": bytes([step])}, total_steps=int(os.environ.get("STEPS", "5")))
        if stop:
            sys.exit(143)
    """
)


def _launch(tmp_path, capacity=Capacity.SPOT, **kw):
    backend = LocalBackend(command=[sys.executable, "-c", TRAIN], state_dir=str(tmp_path / "state"),
                           notice_seconds=0.5, **kw)
    contract = Contract(str(tmp_path / "ck"), 1, capacity.value, 0, "key")
    handle = backend.launch(LaunchRequest(contract=contract, capacity=capacity, token="key-a1"))
    classpath, kwargs = backend.serialize()
    trigger = SpotTrainingTrigger(backend_classpath=classpath, backend_kwargs=kwargs, handle=handle.to_dict(),
                                  attempt=1, checkpoint_prefix=str(tmp_path / "ck"), poll_interval=0.05,
                                  progress_log_interval=0.1, version=2)
    return backend, handle, trigger


def _rebuild(trigger: SpotTrainingTrigger) -> SpotTrainingTrigger:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    # through JSON, as the metadata database stores it
    return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))


async def _first_event(trigger: SpotTrainingTrigger, timeout: float = 30):
    gen = trigger.run()
    event = await asyncio.wait_for(gen.__anext__(), timeout)
    with pytest.raises(StopAsyncIteration):  # nothing after the final event
        await gen.__anext__()
    return event.payload


class TestSpotTrainingTrigger:
    def test_serialize_rebuild_serialize(self, tmp_path):
        _, _, trigger = _launch(tmp_path)
        first = trigger.serialize()
        assert _rebuild(trigger).serialize() == first
        assert first[0] == "airflow_spot_training.triggers.spot_training.SpotTrainingTrigger"
        json.dumps(first[1])  # JSON-safe

    def test_kwargs_of_version_1_still_load_and_an_unknown_version_is_refused(self, tmp_path):
        _, _, trigger = _launch(tmp_path)
        kwargs = dict(trigger.serialize()[1])
        kwargs.pop("version")  # as a version 1 trigger row in the metadata database has it
        assert SpotTrainingTrigger(**kwargs).attempt_handle == trigger.attempt_handle
        with pytest.raises(UnknownVersionError, match="version 9.*upgrade airflow-spot-training"):
            SpotTrainingTrigger(**{**kwargs, "version": 9})

    async def test_success_event(self, tmp_path):
        _, _, trigger = _launch(tmp_path)
        event = AttemptEvent.from_payload(await _first_event(trigger))
        assert event.kind is EventKind.SUCCEEDED and event.attempt == 1 and event.token == "key-a1"
        assert event.started_at <= event.ended_at
        assert event.details["exit_code"] == 0

    async def test_preemption_event(self, tmp_path):
        _, handle, trigger = _launch(tmp_path, env={"STEPS": "1000"})
        manager = CheckpointManager(str(tmp_path / "ck"))
        while manager.latest() is None:  # the training is up and checkpointing
            await asyncio.sleep(0.05)
        assert request_preemption(handle.attempt_dir)  # the cloud reclaims the machine
        event = AttemptEvent.from_payload(await _first_event(trigger))
        assert event.kind is EventKind.PREEMPTED and event.preemptions == 1

    async def test_polling_that_keeps_failing_hands_the_attempt_back(self, tmp_path, monkeypatch):
        _, handle, trigger = _launch(tmp_path, env={"STEPS": "1000"})
        trigger.poll_interval = 0.001
        monkeypatch.setattr(trigger_module, "MAX_BACKOFF", 0.005)  # back off, but not for minutes

        async def unreachable(self, handle):
            raise ConnectionError("the API answers 503")

        monkeypatch.setattr(LocalBackend, "poll", unreachable)
        event = AttemptEvent.from_payload(await _first_event(trigger))
        assert event.kind is EventKind.LOST and "polling failed 20 times" in event.reason
        monkeypatch.undo()
        assert trigger.backend.describe(handle).state is AttemptState.RUNNING  # left alone, not stopped
        trigger.backend.stop(handle)

    async def test_an_error_inside_the_trigger_is_an_event_not_a_crash(self, tmp_path, monkeypatch):
        _, handle, trigger = _launch(tmp_path, env={"STEPS": "1000"})

        async def broken(self, status):
            raise KeyError("a bug")

        monkeypatch.setattr(SpotTrainingTrigger, "_event_for", broken)
        event = AttemptEvent.from_payload(await _first_event(trigger))
        assert event.kind is EventKind.LOST and "KeyError" in event.reason
        trigger.backend.stop(handle)

    async def test_rebuilt_trigger_carries_on(self, tmp_path):
        """A triggerer dies mid-wait; another rebuilds the trigger from its kwargs and finishes the wait."""
        _, _, trigger = _launch(tmp_path, env={"STEPS": "8"})
        task = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(0.3)
        task.cancel()  # the first triggerer goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.cleanup()  # cleanup runs on triggerer restart and must not stop the training
        event = AttemptEvent.from_payload(await _first_event(_rebuild(trigger)))
        assert event.kind is EventKind.SUCCEEDED
        assert CheckpointManager(str(tmp_path / "ck")).latest().step == 8

    async def test_on_kill_stops_the_training(self, tmp_path):
        backend, handle, trigger = _launch(tmp_path, env={"STEPS": "1000"})
        await asyncio.sleep(0.3)
        await trigger.on_kill()
        assert backend.describe(handle).state == "stopped"
        assert not _alive(handle.supervisor_pid)
        status = json.loads((tmp_path / "state" / "key" / "attempt-1" / "status.json").read_text())
        assert not _alive(status["pid"])

    async def test_polling_runs_off_the_event_loop_thread(self, tmp_path):
        """The local backend's file reads run in a worker thread, never on the triggerer's loop."""
        _, _, trigger = _launch(tmp_path, env={"STEPS": "3"})
        threads = []
        real = LocalBackend.describe

        def recording_describe(self, handle):
            threads.append(threading.get_ident())
            return real(self, handle)

        LocalBackend.describe = recording_describe  # observe, do not change, the backend
        try:
            await _first_event(trigger)
        finally:
            LocalBackend.describe = real
        assert threads and threading.get_ident() not in threads
