"""The trigger that waits for one training attempt to end, without a worker slot.

It polls the attempt through its backend (async, never blocking the event loop),
logs progress from the checkpoint commit records now and then, and fires exactly one
:class:`~airflow_spot_training.core.attempt.AttemptEvent` when the attempt succeeds, is
preempted, fails, finds no capacity, is interrupted and restarted in place by its
backend (SageMaker), should move back to spot (``return_to_spot``), or can no longer
be watched (``lost``: polling kept failing, or the trigger itself failed). It returns
right after that event.

Nothing stands between seeing the attempt end and firing the event: the checkpoint and
progress reads an ended attempt needs are the operator's, in the worker, and so are the
reads that tell how it ended (a result record: the event's ``to_settle``, settled by
``SpotBackend.settle``).

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

from airflow_spot_training.core.attempt import (
    AttemptEvent,
    AttemptHandle,
    AttemptState,
    AttemptStatus,
    EventKind,
    check_version,
)
from airflow_spot_training.backends.base import SpotBackend
from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Event,
    JobState,
    deserialize_policy,
    format_duration,
)
from airflow_spot_training.runtime.checkpoint import CheckpointManager

#: version 2: typed events (``kind``), a ``version`` kwarg; version 1 kwargs still load
TRIGGER_VERSION = 2
#: consecutive poll errors after which the attempt is handed back as ``lost``
MAX_POLL_ERRORS = 20
#: longest pause between two polls while polling fails
MAX_BACKOFF = 300.0


class SpotTrainingTrigger(BaseTrigger):
    """Wait for a spot-training attempt to end.

    :param backend_classpath: the backend's class path (from ``SpotBackend.serialize()``).
    :param backend_kwargs: the backend's JSON-safe constructor arguments.
    :param handle: the attempt's handle, as its JSON-safe dict.
    :param attempt: the attempt number.
    :param checkpoint_prefix: where the training commits checkpoints (for progress lines).
    :param poll_interval: seconds between two polls.
    :param progress_log_interval: seconds between two progress lines in the log.
    :param known_preemptions: preemptions of this attempt the operator already counted; the
        trigger fires ``interrupted`` as soon as the backend reports more while the attempt
        keeps running (backends that restart attempts in place, such as SageMaker).
    :param tick_policy: ``[classpath, kwargs]`` of the escalation policy to ask at every poll
        whether an on-demand attempt should move back to spot; ``None`` never asks.
    :param tick_state: the JSON-safe job state the operator had when it deferred, which the
        trigger ages to each poll (time, remaining work) before asking the policy.
    :param version: the layout of these kwargs (absent in version 1).
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
        version: int = 1,
    ) -> None:
        super().__init__()
        check_version("the SpotTrainingTrigger's kwargs", {"version": version}, (1, TRIGGER_VERSION))
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
        self._handle: AttemptHandle | None = None
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
            "version": TRIGGER_VERSION,
        }

    @property
    def backend(self) -> SpotBackend:
        if self._backend is None:  # built lazily: construction may import cloud SDKs
            self._backend = SpotBackend.deserialize(self.backend_classpath, self.backend_kwargs)
            self._backend.bind_poll_interval(self.poll_interval)
        return self._backend

    @property
    def attempt_handle(self) -> AttemptHandle:
        if self._handle is None:
            self._handle = self.backend.load_handle(self.handle)
        return self._handle

    # -- the wait ------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            event = await self._wait()
        except Exception as e:  # anything at all: hand the attempt back rather than dying with it
            self.log.exception("watching attempt %s failed", self.attempt)
            event = self._lost(f"the trigger failed while watching the attempt: {type(e).__name__}: {e}")
        yield TriggerEvent(event.to_payload())
        return

    async def _wait(self) -> AttemptEvent:
        # Spread the first progress line (a read of the checkpoint prefix) over one interval, so
        # many triggers started together do not list the object store in the same second.
        next_progress_log = time.monotonic() + random.uniform(0.5, 1.0) * self.progress_log_interval
        while True:
            status = await self._poll()
            if status is None:
                return self._lost(f"polling failed {MAX_POLL_ERRORS} times in a row; the attempt may still run")
            event = await self._event_for(status)
            if event is not None:
                return event
            if time.monotonic() >= next_progress_log:
                next_progress_log = time.monotonic() + self.progress_log_interval
                self.log.info("%s", await self._progress_line(status))
            if not self.backend.poll_waits_for_next_status:
                await asyncio.sleep(self.poll_interval)

    async def _event_for(self, status: AttemptStatus) -> AttemptEvent | None:
        """The event to fire for this status, or ``None`` to keep waiting."""
        handle = self.attempt_handle
        if status.is_final:
            return AttemptEvent.from_status(status, handle)
        if status.preemptions > self.known_preemptions:
            return AttemptEvent.from_status(status, handle, kind=EventKind.INTERRUPTED)
        if self.tick_policy and status.state is AttemptState.RUNNING:
            reason = await self._ask_to_return_to_spot()
            if reason:
                return AttemptEvent.from_status(status, handle, kind=EventKind.RETURN_TO_SPOT, reason=reason)
        return None

    async def _poll(self) -> AttemptStatus | None:
        """The attempt's status; throttling and transient errors are retried with jittered backoff."""
        for errors in range(1, MAX_POLL_ERRORS + 1):
            try:
                return await self.backend.poll(self.attempt_handle)
            except Exception as e:  # a transient cloud or file error must not end the wait
                self.log.warning("polling attempt %s failed (%s/%s): %s", self.attempt, errors, MAX_POLL_ERRORS, e)
                if errors < MAX_POLL_ERRORS:
                    backoff = min(self.poll_interval * 2 ** (errors - 1), MAX_BACKOFF)
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
        return None

    def _lost(self, reason: str) -> AttemptEvent:
        return AttemptEvent(kind=EventKind.LOST, attempt=self.attempt, token=str(self.handle.get("token", "")),
                            reason=reason)

    # -- progress lines (informative; never on the way to an event) -----------------------------
    async def _progress_line(self, status: AttemptStatus) -> str:
        where = f"attempt {self.attempt} on {self.handle.get('capacity', '?')}: {status.state.value}"

        def newest() -> Any:
            manager = CheckpointManager(self.checkpoint_prefix, keep_last=None,
                                        storage_options=self.backend.checkpoint_storage_options())
            return manager.latest()

        try:
            latest = await asyncio.to_thread(newest)
        except Exception as e:  # progress is informative; never fail the attempt over it
            return f"{where} (could not read checkpoints under {self.checkpoint_prefix}: {e})"
        if latest is None:
            return f"{where}, no checkpoint yet"
        ago = max(0.0, time.time() - latest.record.committed_at)
        total = f" / {latest.record.total_steps}" if latest.record.total_steps else ""
        return f"{where}, step {latest.step}{total}, last checkpoint {format_duration(ago)} ago"

    # -- moving back to spot ---------------------------------------------------------------------
    async def _ask_to_return_to_spot(self) -> str | None:
        """Ask the policy (TICK) whether to leave on-demand for spot; the reason if so."""
        assert self.tick_policy is not None and self.tick_state is not None
        available = await self.backend.aspot_available(self.attempt_handle)
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
        await self.backend.astop(self.attempt_handle)
