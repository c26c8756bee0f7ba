"""The trigger that waits for one training attempt to end, without a worker slot.

It polls the attempt through its backend (async, never blocking the event loop),
logs progress from the checkpoint commit records, and fires exactly one event
when the attempt succeeds, is preempted, fails, or finds no spot capacity:

.. code-block:: python

    {
        "status": "succeeded" | "preempted" | "failed" | "capacity_unavailable" | "stopped"
                  | "interrupted"  # preempted, but the backend restarts it in place (SageMaker)
                  | "return_to_spot",  # the policy wants this on-demand attempt moved to spot
        "reason": str,
        "attempt": int,
        "token": str,
        "started_at": float | None,  # epoch seconds
        "ended_at": float | None,
        "preemptions": int,  # inside this attempt
        "details": dict,
        "checkpoint": {"step": int, "total_steps": int | None, "committed_at": float} | None,
    }

A trigger rebuilt from ``serialize()`` by another triggerer (after a crash or a
restart) carries on from the backend's state: it holds nothing that is not in
its kwargs. ``on_kill`` stops the attempt; ``cleanup`` never does, because it
also runs when a triggerer restarts.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_spot_training.backends.base import FINAL_STATES, AttemptStatus, SpotBackend
from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Event,
    JobState,
    deserialize_policy,
    format_duration,
)
from airflow_spot_training.runtime.checkpoint import CheckpointManager

#: an attempt the backend restarts by itself after a preemption (SageMaker managed spot)
INTERRUPTED = "interrupted"
#: the policy wants the running on-demand attempt moved back to spot
RETURN_TO_SPOT = "return_to_spot"
EVENT_STATUSES = FINAL_STATES | {INTERRUPTED, RETURN_TO_SPOT}
#: consecutive poll errors after which the attempt is reported failed
MAX_POLL_ERRORS = 20


class SpotTrainingTrigger(BaseTrigger):
    """Wait for a spot-training attempt to end.

    :param backend_classpath: the backend's class path (from ``SpotBackend.serialize()``).
    :param backend_kwargs: the backend's JSON-safe constructor arguments.
    :param handle: the attempt's JSON-safe handle returned by ``launch``.
    :param attempt: the attempt number.
    :param checkpoint_prefix: where the training commits checkpoints (for progress).
    :param poll_interval: seconds between two polls.
    :param progress_log_interval: seconds between two progress lines in the log.
    :param known_preemptions: preemptions of this attempt the operator already counted; the
        trigger fires ``interrupted`` as soon as the backend reports more while the attempt
        keeps running (backends that restart attempts in place, such as SageMaker).
    :param tick_policy: ``[classpath, kwargs]`` of the escalation policy to ask at every poll
        whether an on-demand attempt should move back to spot; ``None`` never asks.
    :param tick_state: the JSON-safe job state the operator had when it deferred, which the
        trigger ages to each poll (time, remaining work) before asking the policy.
    """

    def __init__(
        self,
        *,
        backend_classpath: str,
        backend_kwargs: dict[str, Any],
        handle: dict[str, Any],
        attempt: int,
        checkpoint_prefix: str,
        poll_interval: float = 30.0,
        progress_log_interval: float = 60.0,
        known_preemptions: int = 0,
        tick_policy: list[Any] | None = None,
        tick_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backend_classpath = backend_classpath
        self.backend_kwargs = backend_kwargs
        self.handle = handle
        self.attempt = attempt
        self.checkpoint_prefix = checkpoint_prefix
        self.poll_interval = poll_interval
        self.progress_log_interval = progress_log_interval
        self.known_preemptions = known_preemptions
        self.tick_policy = tick_policy
        self.tick_state = tick_state
        self._backend: SpotBackend | None = None
        self._spot_seen_since: float | None = None  # in memory only: a rebuilt trigger starts a new streak

    def serialize(self) -> tuple[str, dict[str, Any]]:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}", {
            "backend_classpath": self.backend_classpath,
            "backend_kwargs": self.backend_kwargs,
            "handle": self.handle,
            "attempt": self.attempt,
            "checkpoint_prefix": self.checkpoint_prefix,
            "poll_interval": self.poll_interval,
            "progress_log_interval": self.progress_log_interval,
            "known_preemptions": self.known_preemptions,
            "tick_policy": self.tick_policy,
            "tick_state": self.tick_state,
        }

    @property
    def backend(self) -> SpotBackend:
        if self._backend is None:  # built lazily: construction may import cloud SDKs
            self._backend = SpotBackend.deserialize(self.backend_classpath, self.backend_kwargs)
        return self._backend

    async def run(self) -> AsyncIterator[TriggerEvent]:
        errors = 0
        # Spread the first progress line (a read of the checkpoint prefix) over one interval, so
        # many triggers started together do not list the object store in the same second.
        next_progress_log = time.monotonic() + random.uniform(0.5, 1.0) * self.progress_log_interval
        while True:
            try:
                status = await self.backend.poll(self.handle)
                errors = 0
            except Exception as e:  # a transient cloud or file error must not end the wait
                errors += 1
                self.log.warning("polling attempt %s failed (%s/%s): %s", self.attempt, errors, MAX_POLL_ERRORS, e)
                if errors >= MAX_POLL_ERRORS:
                    status = AttemptStatus(state="failed", reason=f"could not poll the attempt: {e}",
                                           ended_at=time.time())
                else:
                    await asyncio.sleep(min(self.poll_interval * 2**errors, 300))
                    continue
            if status.is_final:
                checkpoint = await self._latest_checkpoint()
                yield TriggerEvent(self._event(status, checkpoint))
                return
            if status.preemptions > self.known_preemptions:
                checkpoint = await self._latest_checkpoint()
                yield TriggerEvent(self._event(status, checkpoint, INTERRUPTED))
                return
            if self.tick_policy and status.state == "running":
                reason = await self._ask_to_return_to_spot(status)
                if reason:
                    checkpoint = await self._latest_checkpoint()
                    yield TriggerEvent({**self._event(status, checkpoint, RETURN_TO_SPOT), "reason": reason})
                    return
            if time.monotonic() >= next_progress_log:
                next_progress_log = time.monotonic() + self.progress_log_interval
                self.log.info("%s", await self._progress_line(status))
            await asyncio.sleep(self.poll_interval)

    def _event(self, status: AttemptStatus, checkpoint: dict[str, Any] | None,
               state: str | None = None) -> dict[str, Any]:
        return {
            "status": state or status.state,
            "reason": status.reason,
            "attempt": self.attempt,
            "token": self.handle.get("token"),
            "started_at": status.started_at,
            "ended_at": status.ended_at,
            "preemptions": status.preemptions,
            "details": status.details,
            "checkpoint": checkpoint,
        }

    async def _latest_checkpoint(self) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            manager = CheckpointManager(self.checkpoint_prefix, keep_last=None,
                                        storage_options=self.backend.storage_options())
            latest = manager.latest()
            if latest is None:
                return None
            r = latest.record
            return {"step": r.step, "total_steps": r.total_steps, "committed_at": r.committed_at}

        try:
            return await asyncio.to_thread(read)
        except Exception as e:  # progress is informative; never fail the attempt over it
            self.log.warning("could not read checkpoints under %s: %s", self.checkpoint_prefix, e)
            return None

    async def _progress_line(self, status: AttemptStatus) -> str:
        checkpoint = await self._latest_checkpoint()
        where = f"attempt {self.attempt} on {self.handle.get('capacity', '?')}: {status.state}"
        if checkpoint is None:
            return f"{where}, no checkpoint yet"
        ago = max(0.0, time.time() - checkpoint["committed_at"])
        total = f" / {checkpoint['total_steps']}" if checkpoint.get("total_steps") else ""
        return f"{where}, step {checkpoint['step']}{total}, last checkpoint {format_duration(ago)} ago"

    async def _ask_to_return_to_spot(self, status: AttemptStatus) -> str | None:
        """Ask the policy (TICK) whether to leave on-demand for spot; the reason if so."""
        assert self.tick_policy is not None and self.tick_state is not None
        available = await self.backend.aspot_available(self.handle)
        snapshot = dict(self.tick_state)
        launched_at = snapshot.pop("attempt_launched_at", None) or time.time()
        now = time.time()
        self._spot_seen_since = (self._spot_seen_since or now) if available else None
        useful = max(0.0, now - launched_at - float(snapshot.get("restart_overhead") or 0.0))
        if snapshot.get("remaining_work") is not None:
            snapshot["remaining_work"] = max(0.0, snapshot["remaining_work"] - useful)
        state = JobState(now=now, event=Event.TICK, current_capacity=Capacity.ON_DEMAND, spot_available=available,
                         spot_available_for=None if self._spot_seen_since is None else now - self._spot_seen_since,
                         **snapshot)
        policy = deserialize_policy(*self.tick_policy)
        decision = await asyncio.to_thread(policy.decide, state)  # user code: keep it off the loop
        return decision.reason if decision.action is Action.SPOT else None

    async def on_kill(self) -> None:
        """The task was killed or marked failed while deferred: stop the attempt."""
        self.log.info("task killed while deferred: stopping attempt %s", self.attempt)
        await self.backend.astop(self.handle)

