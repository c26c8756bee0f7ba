"""``SpotTrainingOperator``: run a training job on spot capacity and still finish.

One task try runs the whole loop: launch on spot, wait (deferred, no worker slot),
count each preemption, ask the escalation policy, relaunch on spot or on-demand
from the same checkpoint prefix, until the training succeeds. Preemptions never
consume Airflow retries; a genuine training failure fails the try, and the retry
picks up the same ledger (kept in the task state store, which survives retries)
and the same checkpoint prefix.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Sequence

from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk import BaseOperator

from airflow_spot_training import settings
from airflow_spot_training.backends.base import (
    BackendConfigError,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
    SpotCapacityUnavailable,
    resolve_backend,
)
from airflow_spot_training.core import ledger as L
from airflow_spot_training.core.contract import Contract, attempt_token, run_key
from airflow_spot_training.core.deadline import DeadlineError, parse_deadline
from airflow_spot_training.core.policies import POLICIES, make_policy
from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Decision,
    EscalationPolicy,
    Event,
    JobState,
    ThresholdPolicy,
    check_feasible,
    estimate_remaining_work,
    serialize_policy,
)
from airflow_spot_training.links.spot_training import CheckpointLink
from airflow_spot_training.metrics import emit_ledger_changes
from airflow_spot_training.runtime.checkpoint import CheckpointError, CheckpointManager
from airflow_spot_training.runtime.results import read_metrics
from airflow_spot_training.triggers.spot_training import (
    EVENT_STATUSES,
    INTERRUPTED,
    RETURN_TO_SPOT,
    SpotTrainingTrigger,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

LEDGER_KEY = "spot_training_ledger"
XCOM_PREFIX_KEY = "checkpoint_prefix"
XCOM_LEDGER_KEY = "ledger"


class SpotTrainingConfigError(ValueError):
    """An operator argument is invalid; the message names the argument and the fix."""


def _seconds(value: Any, argument: str, *, allow_none: bool = True, minimum: float = 0.0) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise SpotTrainingConfigError(
            f"{argument}={value!r} is invalid: give a number of seconds >= {minimum:g} or a timedelta."
        )
    return float(value)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def default_checkpoint_prefix(base: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    parts = [dag_id, _UNSAFE.sub("_", run_id), task_id] + ([str(map_index)] if map_index >= 0 else [])
    return "/".join([base.rstrip("/")] + parts)


class SpotTrainingOperator(BaseOperator):
    """Train on spot capacity; survive preemptions; escalate to on-demand; resume from checkpoints.

    :param backend: where and how attempts run: a backend object (``LocalBackend``,
        ``EC2SpotBackend``, ...) or a backend name with default settings.
    :param checkpoint_prefix: where the training commits checkpoints; the same for every
        attempt and Airflow retry. (templated) Default:
        ``[spot_training] checkpoint_base_uri``/dag_id/run_id/task_id[/map_index].
    :param max_preemptions: after this many preemptions the next attempt runs on
        on-demand capacity. ``0`` runs on on-demand from the start; ``None``: no threshold.
        Ignored when ``escalation_policy`` is given.
    :param deadline: when the training must be done: an aware datetime, or a duration
        counted from the first launch (``timedelta``, ``"6h"``, ``"PT6H"``). Spot is used
        only while the time left can absorb one more preemption plus restart. (templated)
    :param escalation_policy: replaces the default rule (``ThresholdPolicy(max_preemptions)``):
        an object with ``decide(JobState) -> Decision``, or the name of a shipped policy
        (``"threshold"``, ``"greedy"``, ``"uniform_progress"``, ``"deadline_aware"``).
    :param poll_interval: seconds between two status polls (default ``[spot_training] poll_interval``).
    :param max_attempts: cap on launched attempts across all tries; the task fails beyond it.
    :param max_spot_wait: cap on total time spent waiting for spot capacity; after it the
        next attempt runs on on-demand.
    :param restart_overhead: seconds a launch costs before training progresses (boot plus
        checkpoint restore); the deadline rule budgets it. Default: the backend's estimate.
    :param checkpoint_interval: seconds of work between two checkpoints (work lost at a
        preemption); the deadline rule budgets it. Default 0.
    :param expected_runtime: compute time the whole training needs, used to estimate the work
        left until the training reports progress through its commit records.
    :param return_to_spot: while an on-demand attempt runs, ask the policy at every poll
        whether to move back to spot; when it says so, the on-demand attempt checkpoints and
        stops, and the next attempt launches on spot. Needs a policy that can be serialized
        (``serialize_kwargs()``) and a backend that can tell whether spot is available.
    :param deferrable: wait in the triggerer (default) or block a worker slot.
    :param progress_log_interval: seconds between two progress lines in the triggerer log.
    """

    template_fields: Sequence[str] = ("checkpoint_prefix", "deadline")
    operator_extra_links = (CheckpointLink(),)
    ui_color = "#f0e4ff"

    def __init__(
        self,
        *,
        backend: SpotBackend | str,
        checkpoint_prefix: str | None = None,
        max_preemptions: int | None = 3,
        deadline: Any = None,
        escalation_policy: EscalationPolicy | str | None = None,
        poll_interval: float | timedelta | None = None,
        max_attempts: int = 20,
        max_spot_wait: float | timedelta | None = timedelta(hours=1),
        restart_overhead: float | timedelta | None = None,
        checkpoint_interval: float | timedelta | None = None,
        expected_runtime: float | timedelta | None = None,
        return_to_spot: bool = False,
        deferrable: bool = True,
        progress_log_interval: float | timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            self.backend = resolve_backend(backend)
            self.backend.validate()
        except BackendConfigError as e:
            raise SpotTrainingConfigError(f"{self.task_id}: {e}") from e
        if max_preemptions is not None and (
            not isinstance(max_preemptions, int) or isinstance(max_preemptions, bool) or max_preemptions < 0
        ):
            raise SpotTrainingConfigError(
                f"{self.task_id}: max_preemptions={max_preemptions!r} is invalid: give 0 or a positive "
                "integer (0 runs on on-demand from the start), or None for no threshold."
            )
        if isinstance(escalation_policy, str):
            if escalation_policy not in POLICIES:
                raise SpotTrainingConfigError(
                    f"{self.task_id}: escalation_policy={escalation_policy!r} is not a known policy; "
                    f"choose one of {', '.join(POLICIES)} or pass a policy object."
                )
            extra = {"max_preemptions": max_preemptions} if escalation_policy == "threshold" else {}
            escalation_policy = make_policy(escalation_policy, **extra)
        if escalation_policy is not None and not callable(getattr(escalation_policy, "decide", None)):
            raise SpotTrainingConfigError(
                f"{self.task_id}: escalation_policy={escalation_policy!r} has no decide(state) method; "
                "pass an object implementing airflow_spot_training.core.policy.EscalationPolicy."
            )
        if not _is_template(deadline):
            try:
                parse_deadline(deadline)
            except DeadlineError as e:
                raise SpotTrainingConfigError(f"{self.task_id}: {e}") from e
        if checkpoint_prefix is not None and not isinstance(checkpoint_prefix, str):
            raise SpotTrainingConfigError(
                f"{self.task_id}: checkpoint_prefix must be a string (a path or an fsspec URL), "
                f"got {type(checkpoint_prefix).__name__}."
            )
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise SpotTrainingConfigError(
                f"{self.task_id}: max_attempts={max_attempts!r} is invalid: give a positive integer."
            )
        self.checkpoint_prefix = checkpoint_prefix
        self.max_preemptions = max_preemptions
        self.deadline = deadline
        self.escalation_policy = escalation_policy or ThresholdPolicy(max_preemptions=max_preemptions)
        self.poll_interval = _seconds(poll_interval, "poll_interval", minimum=0.01)
        self.max_attempts = max_attempts
        self.max_spot_wait = _seconds(max_spot_wait, "max_spot_wait")
        overhead = _seconds(restart_overhead, "restart_overhead")
        self.restart_overhead = overhead if overhead is not None else self.backend.default_restart_overhead
        self.checkpoint_interval = _seconds(checkpoint_interval, "checkpoint_interval") or 0.0
        self.expected_runtime = _seconds(expected_runtime, "expected_runtime")
        self.return_to_spot = return_to_spot
        self.deferrable = deferrable
        self.progress_log_interval = _seconds(progress_log_interval, "progress_log_interval", minimum=0.01)
        if return_to_spot:
            try:
                serialize_policy(self.escalation_policy)
            except TypeError as e:
                raise SpotTrainingConfigError(f"{self.task_id}: return_to_spot=True: {e}") from e
        if not _is_template(deadline):
            self._check_feasible(parse_deadline(deadline), now=None)

    def _check_feasible(self, deadline: Any, now: float | None) -> None:
        """Refuse a deadline that even on-demand capacity cannot meet, before launching anything."""
        if deadline is None or self.expected_runtime is None:
            return
        if deadline.after_seconds is not None:
            window = deadline.after_seconds
        elif now is not None:
            window = deadline.at - now
        else:
            return  # an absolute deadline is checked when the run starts
        try:
            check_feasible(self.expected_runtime, window, self.restart_overhead)
        except ValueError as e:
            raise SpotTrainingConfigError(
                f"{self.task_id}: deadline={self.deadline!r} with expected_runtime={self.expected_runtime:g} s: {e}"
            ) from e

    # =====================================================================================
    # entry points
    # =====================================================================================
    def execute(self, context: Context) -> Any:
        ledger = self._open_ledger(context)
        live = ledger.live_attempt
        if live is not None:
            return self._reattach(context, ledger, live)
        last = ledger.current
        if last is not None and last.outcome == L.SUCCEEDED:
            self.log.info("attempt %s already succeeded in an earlier try; nothing to run", last.number)
            return self._finish(context, ledger)
        event = Event.START if not ledger.attempts else Event.FAILED
        return self._next_attempt(context, ledger, event)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: record the attempt's end and decide what is next."""
        if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES or "attempt" not in event:
            raise AirflowException(f"unexpected event from SpotTrainingTrigger: {event!r}")
        ledger = self._load_ledger(context)
        record = ledger.current
        if record is None or record.number != event["attempt"]:
            raise AirflowException(
                f"event for attempt {event['attempt']} does not match the ledger's current attempt "
                f"{record.number if record else None}"
            )
        if event["status"] == INTERRUPTED:
            return self._attempt_interrupted(context, ledger, record, event)
        if event["status"] == RETURN_TO_SPOT:
            return self._move_back_to_spot(context, ledger, record, event)
        return self._attempt_ended(context, ledger, event, in_new_try=False)

    def execute_launch(self, context: Context, event: Any = None) -> Any:
        """Resume after waiting for spot capacity."""
        ledger = self._load_ledger(context)
        return self._next_attempt(context, ledger, Event.CAPACITY_UNAVAILABLE, spot_unavailable=True)

    def on_kill(self) -> None:
        """Stop the running attempt when the task is killed in blocking mode."""
        handle = getattr(self, "_live_handle", None)
        if handle:
            self.log.info("task killed: stopping attempt %s", handle.get("attempt"))
            self.backend.stop(handle)

    # =====================================================================================
    # the ledger
    # =====================================================================================
    def _store(self, context: Context) -> Any:
        store = context.get("task_state_store")
        if store is None:
            raise AirflowException(
                "the task state store is not available; SpotTrainingOperator needs Airflow >= 3.3 "
                "to keep its ledger across retries."
            )
        return store

    def _load_ledger(self, context: Context) -> L.RunLedger:
        data = self._store(context).get(LEDGER_KEY)
        if not data:
            raise AirflowException("no spot-training ledger in the task state store for this task")
        return L.RunLedger.from_dict(data)

    def _save(self, context: Context, ledger: L.RunLedger) -> None:
        previous = self._store(context).get(LEDGER_KEY)
        self._store(context).set(LEDGER_KEY, ledger.to_dict())
        context["ti"].xcom_push(key=XCOM_LEDGER_KEY, value=ledger.summary())
        emit_ledger_changes(previous, ledger, ti=context["ti"], backend=self.backend)

    def _open_ledger(self, context: Context) -> L.RunLedger:
        ti = context["ti"]
        data = self._store(context).get(LEDGER_KEY)
        if data:
            ledger = L.RunLedger.from_dict(data)
            if self.checkpoint_prefix and ledger.checkpoint_prefix != self.checkpoint_prefix:
                self.log.warning(
                    "checkpoint_prefix now renders to %s but earlier tries used %s; keeping the earlier one "
                    "so the run resumes from its checkpoints", self.checkpoint_prefix, ledger.checkpoint_prefix,
                )
            self.log.info(
                "resuming the ledger of earlier tries: %s attempt(s), %s preemption(s), prefix %s",
                len(ledger.attempts), ledger.preemptions, ledger.checkpoint_prefix,
            )
        else:
            map_index = getattr(ti, "map_index", -1)
            map_index = -1 if map_index is None else map_index
            prefix = self.checkpoint_prefix or default_checkpoint_prefix(
                settings.checkpoint_base_uri(), ti.dag_id, ti.run_id, ti.task_id, map_index
            )
            ledger = L.RunLedger(
                run_key=run_key(ti.dag_id, ti.run_id, ti.task_id, map_index),
                checkpoint_prefix=prefix,
            )
            deadline = self._parse_rendered_deadline()
            if deadline is not None and deadline.at is not None and deadline.at <= time.time():
                raise AirflowFailException(
                    f"deadline={self.deadline!r} is already past; nothing was launched. Give a later "
                    "deadline, or a duration such as '6h' counted from the first launch."
                )
            try:
                self._check_feasible(deadline, now=time.time())
            except SpotTrainingConfigError as e:
                raise AirflowFailException(f"{e}; nothing was launched.") from e
        prices = {}
        for capacity in Capacity:
            price = self.backend.price_per_hour({}, capacity)
            if price is not None:
                prices[capacity.value] = price
        ledger.prices.update(prices)
        ledger.note_try(ti.try_number)
        self._check_prefix(ledger.checkpoint_prefix)
        ti.xcom_push(key=XCOM_PREFIX_KEY, value=ledger.checkpoint_prefix)
        CheckpointLink.persist(context, ledger.checkpoint_prefix)
        self._save(context, ledger)
        return ledger

    def _parse_rendered_deadline(self):  # type: ignore[no-untyped-def]
        try:
            return parse_deadline(self.deadline)
        except DeadlineError as e:
            raise AirflowFailException(f"{self.task_id}: {e}") from e

    def _check_prefix(self, prefix: str) -> None:
        try:
            CheckpointManager(prefix, storage_options=self.backend.storage_options()).check_writable()
        except CheckpointError as e:
            raise AirflowFailException(str(e)) from e
        except (ValueError, ImportError) as e:
            raise AirflowFailException(
                f"checkpoint_prefix {prefix!r} cannot be opened ({e}). Use a local path or an fsspec URL "
                "whose filesystem is installed (s3:// needs s3fs, gs:// needs gcsfs)."
            ) from e

    def _latest_step(self, ledger: L.RunLedger) -> tuple[int | None, int | None]:
        try:
            latest = CheckpointManager(
                ledger.checkpoint_prefix, keep_last=None, storage_options=self.backend.storage_options()
            ).latest()
        except Exception as e:  # informative only
            self.log.warning("could not read checkpoints under %s: %s", ledger.checkpoint_prefix, e)
            return None, None
        return (latest.step, latest.record.total_steps) if latest else (None, None)

    # =====================================================================================
    # deciding and launching
    # =====================================================================================
    def _job_state(self, ledger: L.RunLedger, event: Event, spot_unavailable: bool) -> JobState:
        now = time.time()
        launched = [a for a in ledger.attempts if a.outcome != L.CAPACITY_UNAVAILABLE]
        current_capacity = Capacity(launched[-1].capacity) if launched else None
        progress = ledger.progress
        remaining = estimate_remaining_work(progress, ledger.compute_seconds(now), self.expected_runtime)
        spot_wait = ledger.spot_wait_seconds + ((now - ledger.waiting_since) if ledger.waiting_since else 0.0)
        return JobState(
            now=now,
            started_at=ledger.first_launch_at or now,
            deadline=ledger.deadline,
            attempts=len(launched),
            preemptions=ledger.preemptions,
            event=event,
            current_capacity=current_capacity,
            progress=progress,
            remaining_work=remaining,
            restart_overhead=self.restart_overhead,
            checkpoint_interval=self.checkpoint_interval,
            spot_unavailable=spot_unavailable,
            spot_wait=spot_wait,
            total_work=self.expected_runtime,
            poll_interval=self._poll_interval(),
        )

    def _decide(self, ledger: L.RunLedger, event: Event, spot_unavailable: bool) -> Decision:
        state = self._job_state(ledger, event, spot_unavailable)
        decision = self.escalation_policy.decide(state)
        if not isinstance(decision, Decision):
            raise AirflowFailException(
                f"escalation_policy.decide() returned {decision!r}; it must return a Decision"
            )
        if decision.action is Action.WAIT and self.max_spot_wait is not None and state.spot_wait >= self.max_spot_wait:
            decision = Decision(
                Action.ON_DEMAND,
                f"waited {state.spot_wait:.0f} s for spot capacity, reaching max_spot_wait={self.max_spot_wait:.0f} s",
            )
        return decision

    def _next_attempt(self, context: Context, ledger: L.RunLedger, event: Event,
                      spot_unavailable: bool = False) -> Any:
        launched = [a for a in ledger.attempts if a.outcome != L.CAPACITY_UNAVAILABLE]
        if len(launched) >= self.max_attempts:
            raise AirflowFailException(
                f"max_attempts={self.max_attempts} reached ({ledger.preemptions} preemption(s)); not launching "
                "again. Raise max_attempts, or lower max_preemptions to escalate to on-demand sooner."
            )
        decision = self._decide(ledger, event, spot_unavailable)
        now = time.time()
        ledger.record_decision(decision, event.value, now)
        self.log.info("escalation policy: %s (%s)", decision.action.value, decision.reason)
        if decision.action is Action.WAIT:
            if ledger.waiting_since is None:
                ledger.waiting_since = now
            self._save(context, ledger)
            return self._wait_for_capacity(context, ledger, max(decision.wait_seconds, 0.01))
        if ledger.waiting_since is not None:
            ledger.spot_wait_seconds += now - ledger.waiting_since
            ledger.waiting_since = None
        capacity = decision.action.capacity
        assert capacity is not None
        return self._launch(context, ledger, capacity)

    def _request(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord) -> LaunchRequest:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        contract = Contract(
            checkpoint_uri=ledger.checkpoint_prefix,
            attempt=record.number,
            capacity=record.capacity,
            preemptions=sum(a.preemptions for a in ledger.attempts[: record.number - 1]),
            run_key=ledger.run_key,
            result_uri=f"{ledger.checkpoint_prefix.rstrip('/')}/_results/attempt-{record.number}.json",
        )
        return LaunchRequest(
            contract=contract,
            capacity=Capacity(record.capacity),
            token=record.token,
            labels={
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": str(-1 if map_index is None else map_index),
                "attempt": str(record.number),
                "run_key": ledger.run_key,
            },
        )

    def _launch(self, context: Context, ledger: L.RunLedger, capacity: Capacity) -> Any:
        number = ledger.next_attempt_number()
        start_step, total = self._latest_step(ledger)
        record = L.AttemptRecord(
            number=number,
            capacity=capacity.value,
            token=attempt_token(ledger.run_key, number),
            try_number=context["ti"].try_number,
            launched_at=time.time(),
            start_step=start_step,
            checkpoint_step=start_step,
            total_steps=total,
        )
        ledger.attempts.append(record)
        # Persist before launching: a worker that dies inside launch() leaves a record whose
        # token makes the next try's launch() return the same attempt instead of a second one.
        self._save(context, ledger)
        return self._start(context, ledger, record)

    def _start(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord) -> Any:
        request = self._request(context, ledger, record)
        try:
            handle = self.backend.launch(request)
        except SpotCapacityUnavailable as e:
            record.outcome, record.reason, record.ended_at = L.CAPACITY_UNAVAILABLE, str(e), time.time()
            self._save(context, ledger)
            self.log.warning("attempt %s: no spot capacity: %s", record.number, e)
            return self._next_attempt(context, ledger, Event.CAPACITY_UNAVAILABLE, spot_unavailable=True)
        except CloudActionRequired as e:
            record.outcome, record.reason, record.ended_at = L.FAILED, str(e), time.time()
            self._save(context, ledger)
            raise AirflowFailException(str(e)) from e
        record.handle = handle
        record.outcome = L.RUNNING
        record.pool = handle.get("pool")
        record.price_per_hour = self.backend.price_per_hour(handle, Capacity(record.capacity))
        if ledger.first_launch_at is None:
            ledger.first_launch_at = record.launched_at
            deadline = self._parse_rendered_deadline()
            if deadline is not None:
                ledger.deadline = deadline.resolve(ledger.first_launch_at)
        self._save(context, ledger)
        self.log.info(
            "launched attempt %s on %s capacity (token %s, %s preemption(s) so far), checkpoints under %s",
            record.number, record.capacity, record.token, ledger.preemptions, ledger.checkpoint_prefix,
        )
        return self._wait_for_attempt(context, ledger, record)

    def _reattach(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord) -> Any:
        request = self._request(context, ledger, record)
        handle = record.handle or self.backend.find(request)
        if handle is None:
            self.log.info("attempt %s was being launched when the last try ended; launching it idempotently",
                          record.number)
            return self._start(context, ledger, record)
        record.handle = handle
        status = self.backend.describe(handle)
        if status.is_final:
            self.log.info("attempt %s ended while no one watched: %s", record.number, status.state)
            event = self._event_from_status(record, status.to_dict())
            return self._attempt_ended(context, ledger, event, in_new_try=True)
        if record.outcome == L.LAUNCHING:
            record.outcome = L.RUNNING
            self._save(context, ledger)
        self.log.info("re-attaching to attempt %s, still %s; not launching another", record.number, status.state)
        return self._wait_for_attempt(context, ledger, record)

    # =====================================================================================
    # waiting
    # =====================================================================================
    def _poll_interval(self) -> float:
        return self.poll_interval if self.poll_interval is not None else settings.poll_interval()

    def _wait_for_attempt(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord) -> Any:
        assert record.handle is not None
        if self.deferrable:
            classpath, kwargs = self.backend.serialize()
            self.defer(
                trigger=SpotTrainingTrigger(
                    backend_classpath=classpath,
                    backend_kwargs=kwargs,
                    handle=record.handle,
                    attempt=record.number,
                    checkpoint_prefix=ledger.checkpoint_prefix,
                    poll_interval=self._poll_interval(),
                    progress_log_interval=self.progress_log_interval or settings.progress_log_interval(),
                    known_preemptions=record.preemptions,
                    **self._tick_kwargs(ledger, record),
                ),
                method_name="execute_complete",
            )
        # blocking mode: hold the worker slot and poll here
        self._live_handle = record.handle
        try:
            while True:
                status = self.backend.describe(record.handle)
                if status.is_final or status.preemptions > record.preemptions:
                    break
                time.sleep(self._poll_interval())
        finally:
            self._live_handle = None
        event = self._event_from_status(record, status.to_dict())
        if not status.is_final:
            event["status"] = INTERRUPTED
            return self._attempt_interrupted(context, ledger, record, event)
        return self._attempt_ended(context, ledger, event, in_new_try=False)

    def _tick_kwargs(self, ledger: L.RunLedger, record: L.AttemptRecord) -> dict[str, Any]:
        """What the trigger needs to ask the policy about moving an on-demand attempt back to spot."""
        if not self.return_to_spot or record.capacity != Capacity.ON_DEMAND.value:
            return {}
        classpath, kwargs = serialize_policy(self.escalation_policy)
        state = self._job_state(ledger, Event.TICK, spot_unavailable=False)
        snapshot = {
            "started_at": state.started_at, "deadline": state.deadline, "attempts": state.attempts,
            "preemptions": state.preemptions, "progress": state.progress,
            "remaining_work": state.remaining_work, "restart_overhead": state.restart_overhead,
            "checkpoint_interval": state.checkpoint_interval, "spot_wait": state.spot_wait,
            "total_work": state.total_work, "poll_interval": state.poll_interval,
            "attempt_launched_at": record.launched_at,
        }
        return {"tick_policy": [classpath, kwargs], "tick_state": snapshot}

    def _wait_for_capacity(self, context: Context, ledger: L.RunLedger, seconds: float) -> Any:
        if self.deferrable:
            from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=seconds)), method_name="execute_launch")
        time.sleep(seconds)
        return self._next_attempt(context, ledger, Event.CAPACITY_UNAVAILABLE, spot_unavailable=True)

    def _event_from_status(self, record: L.AttemptRecord, status: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": status["state"],
            "reason": status.get("reason", ""),
            "attempt": record.number,
            "token": record.token,
            "started_at": status.get("started_at"),
            "ended_at": status.get("ended_at"),
            "preemptions": status.get("preemptions", 0),
            "details": status.get("details") or {},
            "checkpoint": None,
        }

    # =====================================================================================
    # an attempt ended, or was interrupted and restarted in place by its backend
    # =====================================================================================
    def _attempt_interrupted(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord,
                             event: dict[str, Any]) -> Any:
        """The backend restarts the attempt itself (SageMaker): count, then keep it or escalate."""
        record.preemptions = max(record.preemptions, int(event.get("preemptions") or 0))
        if event.get("checkpoint"):
            record.checkpoint_step = event["checkpoint"].get("step")
            record.total_steps = event["checkpoint"].get("total_steps") or record.total_steps
        decision = self._decide(ledger, Event.PREEMPTED, spot_unavailable=False)
        if decision.action is Action.ON_DEMAND and record.capacity == Capacity.SPOT.value:
            ledger.record_decision(decision, Event.PREEMPTED.value, time.time())
            self.log.info("attempt %s interrupted %s time(s); escalating: %s", record.number,
                          record.preemptions, decision.reason)
            assert record.handle is not None
            self.backend.stop(record.handle)
            record.outcome, record.reason, record.ended_at = L.PREEMPTED, (
                f"interrupted {record.preemptions} time(s); stopped to escalate to on-demand"), time.time()
            self._save(context, ledger)
            return self._launch(context, ledger, Capacity.ON_DEMAND)
        self._save(context, ledger)
        self.log.info("attempt %s interrupted %s time(s); the backend restarts it in place (%s)",
                      record.number, record.preemptions, decision.reason)
        return self._wait_for_attempt(context, ledger, record)

    def _move_back_to_spot(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord,
                           event: dict[str, Any]) -> Any:
        """The policy wants spot again: the on-demand attempt checkpoints and stops, spot takes over."""
        decision = Decision(Action.SPOT, event.get("reason") or "the policy moved back to spot")
        assert record.handle is not None
        self.backend.stop(record.handle)  # a notice first: the training writes a checkpoint
        status = self.backend.describe(record.handle)
        record.outcome, record.reason = L.STOPPED, f"moved back to spot: {decision.reason}"
        record.ended_at = status.ended_at or time.time()
        record.started_at = status.started_at or record.started_at or record.launched_at
        step, total = self._latest_step(ledger)
        record.checkpoint_step, record.total_steps = step, total or record.total_steps
        ledger.record_decision(decision, Event.TICK.value, time.time())
        self._save(context, ledger)
        self.log.info("attempt %s on on-demand stopped at step %s: %s", record.number, step, decision.reason)
        return self._launch(context, ledger, Capacity.SPOT)

    # =====================================================================================
    # an attempt ended
    # =====================================================================================
    def _attempt_ended(self, context: Context, ledger: L.RunLedger, event: dict[str, Any],
                       *, in_new_try: bool) -> Any:
        record = ledger.current
        assert record is not None
        if record.outcome in L.FINAL_OUTCOMES:
            self.log.warning("attempt %s was already recorded as %s; ignoring a repeated event",
                             record.number, record.outcome)
            return self._continue_after(context, ledger, record, in_new_try)
        status = event["status"]
        record.outcome = status
        record.reason = event.get("reason") or ""
        record.started_at = event.get("started_at") or record.started_at or record.launched_at
        record.ended_at = event.get("ended_at") or time.time()
        preemptions = int(event.get("preemptions") or 0)
        record.preemptions = max(preemptions, 1) if status == L.PREEMPTED else preemptions
        details = event.get("details") or {}
        if details.get("billable_seconds") is not None:
            record.billable_seconds = float(details["billable_seconds"])
        if details.get("training_seconds") is not None:
            record.training_seconds = float(details["training_seconds"])
        if details.get("on_demand_price") is not None:
            record.on_demand_price_per_hour = float(details["on_demand_price"])
        checkpoint = event.get("checkpoint")
        if checkpoint is None:
            step, total = self._latest_step(ledger)
            checkpoint = {"step": step, "total_steps": total} if step is not None else None
        if checkpoint:
            record.checkpoint_step = checkpoint.get("step")
            record.total_steps = checkpoint.get("total_steps") or record.total_steps
        self._save(context, ledger)
        self.log.info(
            "attempt %s on %s ended: %s (%s); checkpoint step %s; %s preemption(s) in total",
            record.number, record.capacity, status, record.reason, record.checkpoint_step, ledger.preemptions,
        )
        return self._continue_after(context, ledger, record, in_new_try)

    def _continue_after(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord,
                        in_new_try: bool) -> Any:
        outcome = record.outcome
        if outcome == L.SUCCEEDED:
            return self._finish(context, ledger)
        if outcome == L.PREEMPTED:
            return self._next_attempt(context, ledger, Event.PREEMPTED)
        if outcome == L.CAPACITY_UNAVAILABLE:
            return self._next_attempt(context, ledger, Event.CAPACITY_UNAVAILABLE, spot_unavailable=True)
        if outcome == L.STOPPED and in_new_try:
            # stopped while the task was killed; this new try carries on from the checkpoint
            return self._next_attempt(context, ledger, Event.FAILED)
        if outcome == L.STOPPED:
            raise AirflowException(f"attempt {record.number} was stopped from outside: {record.reason}")
        if in_new_try:
            return self._next_attempt(context, ledger, Event.FAILED)
        raise AirflowException(
            f"attempt {record.number} on {record.capacity} failed: {record.reason}. An Airflow retry resumes "
            f"from {ledger.checkpoint_prefix} with the ledger intact."
        )

    def _finish(self, context: Context, ledger: L.RunLedger) -> dict[str, Any]:
        record = ledger.current
        summary = ledger.summary()
        if record is not None:
            try:
                metrics = read_metrics(ledger.checkpoint_prefix, record.number, **self.backend.storage_options())
            except Exception as e:  # metrics are optional
                self.log.warning("could not read the training's metrics: %s", e)
                metrics = None
            summary["metrics"] = metrics or {}
        context["ti"].xcom_push(key=XCOM_LEDGER_KEY, value=summary)
        self.log.info("training finished:\n%s", L.format_summary(summary))
        return summary
