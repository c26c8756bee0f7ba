"""``SpotTrainingOperator``: run a training job on spot capacity and still finish.

One task try runs the whole loop: launch on spot, wait (deferred, no worker slot),
count each preemption, ask the escalation policy, relaunch on spot or on-demand
from the same checkpoint prefix, until the training succeeds. Preemptions never
consume Airflow retries; a genuine training failure fails the try, and the retry
picks up the same ledger (kept in the task state store, which survives retries)
and the same checkpoint prefix.

How an attempt's end is read, the same for every backend:

* **succeeded**: the backend says so, or the attempt committed its final checkpoint
  (``reason="final"`` or the planned last step, stamped with this attempt's token) before
  it was reclaimed or killed: a notice that comes after the work is done changes nothing;
* **preempted**: the capacity was reclaimed (with or without the notice caught; a
  training that caught it, checkpointed and exited 143 is a preemption, never a failure);
  counted, and the policy decides where the next attempt runs;
* **capacity unavailable**: no capacity in any pool; see :meth:`_after_no_capacity`;
* **failed** / **stopped from outside**: the try fails; a retry resumes from the prefix;
* **lost** (the trigger could not watch it): the attempt is re-attached by the next try,
  or stopped first when no try is left.
"""

from __future__ import annotations

import posixpath
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import quote

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_spot_training import settings
from airflow_spot_training.backends.base import (
    AttemptHandle,
    BackendConfigError,
    CapacityUnavailable,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
    is_template,
    resolve_backend,
)
from airflow_spot_training.core.attempt import (
    AttemptEvent,
    AttemptState,
    CheckpointInfo,
    EventKind,
    UnknownVersionError,
)
from airflow_spot_training.core.contract import Contract, attempt_token, run_key
from airflow_spot_training.core.deadline import DeadlineError, parse_deadline
from airflow_spot_training.core.ledger import AttemptRecord, RunLedger, format_summary
from airflow_spot_training.core.policies import (
    NOT_GIVEN,
    POLICIES,
    NotGiven,
    default_max_spot_wait,
    default_policy,
    named_policy,
)
from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Decision,
    EscalationPolicy,
    Event,
    JobState,
    check_feasible,
    estimate_remaining_work,
    format_duration,
    serialize_policy,
)
from airflow_spot_training.core.pool_health import PoolEvent, PoolHealthRule, PoolObservation
from airflow_spot_training.core.redaction import redact, redact_lines, secret_values_of
from airflow_spot_training.core.spend import (
    SpendCap,
    missing_price,
    projected_attempt_cost,
    projection_price,
    spend_so_far,
)
from airflow_spot_training.links.spot_training import AttemptPageLink, CheckpointLink, attempt_page_links
from airflow_spot_training.metrics import emit_ledger_changes
from airflow_spot_training.pool_health_store import PoolHealthStore
from airflow_spot_training.operators import model_asset, warm_start
from airflow_spot_training.runtime.checkpoint import CheckpointError, CheckpointManager
from airflow_spot_training.runtime.results import read_metrics, read_progress
from airflow_spot_training.triggers.spot_training import SpotTrainingTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

LEDGER_KEY = "spot_training_ledger"
XCOM_PREFIX_KEY = "checkpoint_prefix"
XCOM_LEDGER_KEY = "ledger"
#: seconds ``on_kill`` waits for a launch in progress before looking the attempt up itself
KILL_WAIT_FOR_LAUNCH = 3.0


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


def _count(value: Any, argument: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpotTrainingConfigError(f"{argument}={value!r} is invalid: give an integer >= {minimum}.")
    return value


def _usd_cap(value: Any, argument: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise SpotTrainingConfigError(
            f"{argument}={value!r} is invalid: give a positive number of USD (e.g. {argument}=50.0), or leave it "
            "out for no cap."
        )
    return float(value)


def default_checkpoint_prefix(base: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """``<base>/<dag_id>/<run_id>/<task_id>[/<map_index>]``, each part percent-encoded.

    Encoding (rather than replacing characters) keeps distinct run ids distinct:
    ``manual:1`` and ``manual_1`` get different prefixes.
    """
    parts = [dag_id, run_id, task_id] + ([str(map_index)] if map_index >= 0 else [])
    for part in parts:
        if part in ("", ".", ".."):
            raise SpotTrainingConfigError(
                f"{part!r} cannot be a path component of the checkpoint prefix (dag_id, run_id, task_id); "
                "give checkpoint_prefix= explicitly, or use another run id."
            )
    return "/".join([base.rstrip("/")] + [quote(part, safe="-_.=+@") for part in parts])


class SpotTrainingOperator(BaseOperator):
    """Train on spot capacity; survive preemptions; escalate to on-demand; resume from checkpoints.

    :param backend: where and how attempts run: a backend object (``LocalBackend``,
        ``EC2SpotBackend``, ...) or a backend name with default settings. Its templated
        arguments (command, env, instance types, ...) are rendered per try. (templated)
    :param checkpoint_prefix: where the training commits checkpoints; the same for every
        attempt and Airflow retry. (templated) Default:
        ``[spot_training] checkpoint_base_uri``/dag_id/run_id/task_id[/map_index].
    :param max_preemptions: after this many preemptions the next attempt runs on
        on-demand capacity. ``0`` runs on on-demand from the start; ``None``: no threshold.
        Left out: 3 under the threshold rule, no cap under the deadline-aware default.
        Ignored when ``escalation_policy`` is an object.
    :param deadline: when the training must be done: an aware datetime, or a duration
        counted from the first launch (``timedelta``, ``"6h"``, ``"PT6H"``). Spot is used
        only while the time left can absorb one more preemption plus restart. (templated)
    :param escalation_policy: replaces the default rule: an object with
        ``decide(JobState) -> Decision``, or the name of a shipped policy (``"threshold"``,
        ``"greedy"``, ``"uniform_progress"``, ``"deadline_aware"``). Default: with both
        ``deadline`` and ``expected_runtime``, ``DeadlineAwarePolicy``; otherwise
        ``ThresholdPolicy(max_preemptions)``.
    :param poll_interval: seconds between two status polls (default ``[spot_training] poll_interval``).
    :param max_attempts: cap on launched attempts across all tries; the task fails beyond it.
    :param max_spot_wait: cap on total time spent waiting for spot capacity; after it the
        next attempt runs on on-demand. Left out: one hour, or no cap under the
        deadline-aware policy with a deadline and an expected runtime (the deadline bounds it).
    :param max_on_demand_wait: cap on total time spent waiting for on-demand capacity when
        no pool has any; after it the task fails, naming the pools and their answers.
    :param capacity_retry_interval: seconds between two on-demand launches while no pool
        has on-demand capacity.
    :param max_capacity_attempts: cap on launches that found no capacity (spot or
        on-demand), across all tries; the task fails beyond it.
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
    :param deferrable: wait in the triggerer, or block a worker slot (default
        ``[spot_training] default_deferrable``, itself true by default).
    :param progress_log_interval: seconds between two progress lines in the triggerer log.
    :param num_nodes: machines each attempt runs on together (multi-node training, a gang):
        every node gets its rank, the gang's size and rank 0's address (user guide,
        "Multi-node training"); one node reclaimed stops the gang and counts as one
        preemption; cost is billed per node. Needs a backend that can gang. Default 1.
    :param max_cost: USD the whole run may cost (every attempt, every Airflow try). Before each launch
        the attempt's cost is projected (the work left plus one restart, at the capacity's price; a
        spot price not known before launch is taken as the on-demand price); a launch that would
        cross the cap is refused and the task fails, saying what was spent and projected. Needs
        ``expected_runtime`` and the backend's prices.
    :param max_on_demand_cost: USD the run may spend on on-demand capacity; checked like ``max_cost``
        before each on-demand launch.
    :param pool_cooldown: pool health, for backends with a ladder of pools (EC2, Compute Engine):
        seconds a spot launch tries a pool last after it reclaimed an attempt or had no capacity;
        pools are otherwise tried longest-uptime first, from observations every task of the
        deployment shares (on-demand launches keep the configured order).
        ``0`` turns it off (the configured order). Default ``[spot_training] pool_cooldown`` (1800).
    :param init_from: warm start: the first attempt of a run starts from a committed checkpoint of an
        earlier run while the run's own prefix has none; its own checkpoints still go to the run's
        prefix. A checkpoint prefix (its newest committed checkpoint) or step directory, an ``Asset``
        (the ``checkpoint_uri`` of its newest event, e.g. this operator's own outlet), or
        ``"last_success"`` (the final checkpoint of this task's newest earlier successful run).
        The training sees it as ``contract.init_uri``. (templated)
    :param init_from_missing: when the warm-start checkpoint is missing or unreadable: ``"fail"``
        (default; nothing is launched) or ``"scratch"`` (start from scratch, with a warning).

    On success the task returns its ledger summary, which names ``model_uri`` (SageMaker's model
    artifacts, Vertex AI's model directory, the final checkpoint otherwise) and
    ``final_checkpoint_uri``; every ``Asset`` in ``outlets=`` gets an event whose extra carries them
    with the final step, the training's metrics, preemptions, cost and savings.
    """

    template_fields: Sequence[str] = ("checkpoint_prefix", "deadline", "backend", "init_from")
    ui_color = "#f0e4ff"

    def __init__(
        self,
        *,
        backend: SpotBackend | str,
        checkpoint_prefix: str | None = None,
        max_preemptions: int | None | NotGiven = NOT_GIVEN,
        deadline: Any = None,
        escalation_policy: EscalationPolicy | str | None = None,
        poll_interval: float | timedelta | None = None,
        max_attempts: int = 20,
        max_spot_wait: float | timedelta | None | NotGiven = NOT_GIVEN,
        max_on_demand_wait: float | timedelta = timedelta(minutes=30),
        capacity_retry_interval: float | timedelta = 60.0,
        max_capacity_attempts: int = 100,
        restart_overhead: float | timedelta | None = None,
        checkpoint_interval: float | timedelta | None = None,
        expected_runtime: float | timedelta | None = None,
        return_to_spot: bool = False,
        deferrable: bool | None = None,
        progress_log_interval: float | timedelta | None = None,
        num_nodes: int = 1,
        max_cost: float | None = None,
        max_on_demand_cost: float | None = None,
        pool_cooldown: float | timedelta | None = None,
        init_from: Any = None,
        init_from_missing: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            self.backend = resolve_backend(backend)
        except BackendConfigError as e:
            raise SpotTrainingConfigError(f"{self.task_id}: {e}") from e
        self._check_deadline(deadline)
        if checkpoint_prefix is not None and not isinstance(checkpoint_prefix, str):
            raise SpotTrainingConfigError(
                f"{self.task_id}: checkpoint_prefix must be a string (a path or an fsspec URL), "
                f"got {type(checkpoint_prefix).__name__}."
            )
        self.checkpoint_prefix = checkpoint_prefix
        self.max_preemptions = max_preemptions
        self.deadline = deadline
        self.max_attempts = _count(max_attempts, "max_attempts")
        self.max_capacity_attempts = _count(max_capacity_attempts, "max_capacity_attempts")
        self.poll_interval = _seconds(poll_interval, "poll_interval", minimum=0.01)
        self.max_on_demand_wait = _seconds(max_on_demand_wait, "max_on_demand_wait", allow_none=False)
        self.capacity_retry_interval = _seconds(capacity_retry_interval, "capacity_retry_interval",
                                                allow_none=False, minimum=0.01)
        overhead = _seconds(restart_overhead, "restart_overhead")
        self.restart_overhead = overhead if overhead is not None else self.backend.default_restart_overhead
        self.checkpoint_interval = _seconds(checkpoint_interval, "checkpoint_interval") or 0.0
        self.expected_runtime = _seconds(expected_runtime, "expected_runtime")
        self.escalation_policy = self._policy(escalation_policy, max_preemptions)
        self.max_spot_wait = _seconds(default_max_spot_wait(max_spot_wait, self.escalation_policy, deadline=deadline,
                                                            expected_runtime=self.expected_runtime), "max_spot_wait")
        self.return_to_spot = return_to_spot
        self.deferrable = settings.default_deferrable() if deferrable is None else bool(deferrable)
        self.progress_log_interval = _seconds(progress_log_interval, "progress_log_interval", minimum=0.01)
        self.num_nodes = self._check_num_nodes(num_nodes)
        self.spend_cap = self._spend_cap(max_cost, max_on_demand_cost)
        self.pool_cooldown = _seconds(pool_cooldown, "pool_cooldown")
        self._pool_health_store: PoolHealthStore | None = None
        self._set_init_from(init_from, init_from_missing)
        if isinstance(checkpoint_prefix, str) and not is_template(checkpoint_prefix):
            self._check_prefix_shape(checkpoint_prefix)
        if return_to_spot:
            try:
                serialize_policy(self.escalation_policy)
            except TypeError as e:
                raise SpotTrainingConfigError(f"{self.task_id}: return_to_spot=True: {e}") from e
        if not is_template(deadline):
            self._check_feasible(parse_deadline(deadline), now=None)
        self._check_cap_has_prices()
        self.operator_extra_links = (CheckpointLink(),) + attempt_page_links(self.backend.link_labels,
                                                                           self.max_attempts)
        self._inflight: tuple[LaunchRequest, threading.Thread, dict[str, Any]] | None = None
        self._killed = threading.Event()
        self._live_handle: AttemptHandle | None = None
        self._result: dict[str, Any] | None = None  # the succeeded run's summary, for lineage

    # -- argument checks -------------------------------------------------------------------
    def _set_init_from(self, init_from: Any, init_from_missing: str) -> None:
        try:
            warm_start.check_init_from(init_from, init_from_missing, self.backend)
        except warm_start.WarmStartError as e:
            raise SpotTrainingConfigError(f"{self.task_id}: {e}") from e
        self.init_from, self.init_from_missing = init_from, init_from_missing
        if model_asset.is_asset(init_from) and init_from not in self.inlets:
            self.inlets = [*self.inlets, init_from]  # its events reach the task as inlet_events

    def _policy(self, policy: EscalationPolicy | str | None,
                max_preemptions: int | None | NotGiven) -> EscalationPolicy:
        """The policy given (an object or a name), else the default rule (see :func:`default_policy`)."""
        if max_preemptions is not None and max_preemptions is not NOT_GIVEN and (
            not isinstance(max_preemptions, int) or isinstance(max_preemptions, bool) or max_preemptions < 0
        ):
            raise SpotTrainingConfigError(
                f"{self.task_id}: max_preemptions={max_preemptions!r} is invalid: give 0 or a positive "
                "integer (0 runs on on-demand from the start), or None for no threshold."
            )
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise SpotTrainingConfigError(
                    f"{self.task_id}: escalation_policy={policy!r} is not a known policy; "
                    f"choose one of {', '.join(POLICIES)} or pass a policy object."
                )
            policy = named_policy(policy, max_preemptions)
        if policy is not None and not callable(getattr(policy, "decide", None)):
            raise SpotTrainingConfigError(
                f"{self.task_id}: escalation_policy={policy!r} has no decide(state) method; "
                "pass an object implementing airflow_spot_training.core.policy.EscalationPolicy."
            )
        return policy or default_policy(deadline=self.deadline, expected_runtime=self.expected_runtime,
                                        max_preemptions=max_preemptions)

    def _check_num_nodes(self, num_nodes: Any) -> int:
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise SpotTrainingConfigError(
                f"{self.task_id}: num_nodes={num_nodes!r} is invalid: give an integer >= 1 (the machines each "
                "attempt trains on together; 1 for a single machine)."
            )
        try:
            self.backend.check_gang(num_nodes)
        except BackendConfigError as e:
            gangs = ", ".join(sorted(kind for kind, can in _gang_backends().items() if can))
            fix = "" if self.backend.supports_gangs else f" Use num_nodes=1, or a backend that can ({gangs})."
            raise SpotTrainingConfigError(f"{self.task_id}: num_nodes={num_nodes}: {e}{fix}") from e
        return num_nodes

    def _spend_cap(self, max_cost: Any, max_on_demand_cost: Any) -> SpendCap:
        try:
            cap = SpendCap(_usd_cap(max_cost, "max_cost"), _usd_cap(max_on_demand_cost, "max_on_demand_cost"))
        except SpotTrainingConfigError as e:
            raise SpotTrainingConfigError(f"{self.task_id}: {e}") from e
        if cap.active and self.expected_runtime is None:
            name = "max_cost" if cap.max_cost is not None else "max_on_demand_cost"
            raise SpotTrainingConfigError(
                f"{self.task_id}: {name}= needs expected_runtime= (the compute time the whole training needs) to "
                "project an attempt's cost before the training reports progress; give expected_runtime=timedelta("
                "hours=...), or leave the cap out."
            )
        return cap

    def _check_cap_has_prices(self) -> None:
        """A spend cap projects with the on-demand price (spot launches too, when spot's is unknown)."""
        if not self.spend_cap.active or self.backend.looks_prices_up() or any(
                is_template(getattr(self.backend, name)) for name in self.backend.template_fields):
            return  # known only at run time: checked before the first launch
        if self.backend.configured_price(Capacity.ON_DEMAND) is None:
            name = "max_cost" if self.spend_cap.max_cost is not None else "max_on_demand_cost"
            argument = self.backend.price_argument
            raise SpotTrainingConfigError(
                f"{self.task_id}: {name}= needs the backend's on-demand price to project what an attempt costs "
                f"(and a spot attempt whose spot price is not known before it launches): give "
                f"{type(self.backend).__name__}({argument}=...) for every instance type it may launch, or leave "
                "the cap out."
            )

    def _check_deadline(self, deadline: Any) -> None:
        if is_template(deadline):
            return
        try:
            parse_deadline(deadline)
        except DeadlineError as e:
            raise SpotTrainingConfigError(f"{self.task_id}: {e}") from e

    def _check_prefix_shape(self, prefix: str) -> None:
        try:
            self.backend.check_checkpoint_prefix(prefix)
        except BackendConfigError as e:
            raise SpotTrainingConfigError(f"{self.task_id}: {e}") from e

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
        self._validate_rendered()
        ledger = self._open_ledger(context)
        live = ledger.live_attempt
        if live is not None:
            return self._reattach(context, ledger, live)
        last = ledger.current
        if last is not None and last.outcome is AttemptState.SUCCEEDED:
            self.log.info("attempt %s already succeeded in an earlier try; nothing to run", last.number)
            return self._finish(context, ledger)
        event = Event.START if not ledger.attempts else Event.FAILED
        return self._next_attempt(context, ledger, event)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: record the attempt's end and decide what is next."""
        try:
            attempt_event = AttemptEvent.from_payload(event)
        except (ValueError, UnknownVersionError) as e:
            raise AirflowException(f"unexpected event from SpotTrainingTrigger: {e}") from e
        ledger = self._load_ledger(context)
        record = ledger.current
        if record is None or record.number != attempt_event.attempt:
            raise AirflowException(
                f"event for attempt {attempt_event.attempt} does not match the ledger's current attempt "
                f"{record.number if record else None}"
            )
        kind = attempt_event.kind
        if kind is EventKind.INTERRUPTED:
            return self._attempt_interrupted(context, ledger, record, attempt_event)
        if kind is EventKind.RETURN_TO_SPOT:
            return self._move_back_to_spot(context, ledger, record, attempt_event)
        if kind is EventKind.LOST:
            return self._attempt_lost(context, ledger, record, attempt_event)
        return self._attempt_ended(context, ledger, attempt_event, in_new_try=False)

    def execute_launch(self, context: Context, event: Any = None) -> Any:
        """Resume after waiting for capacity: the policy is asked again (spot may be back)."""
        ledger = self._load_ledger(context)
        return self._next_attempt(context, ledger, Event.WAITED)

    def on_kill(self) -> None:
        """Stop what this try started when the task is killed (marked failed, cleared, timed out).

        Whatever the task was doing: a launch in progress is waited for (briefly) and its
        attempt stopped, or looked up by its token; a blocking wait stops its attempt.
        """
        self._killed.set()
        inflight = self._inflight
        if inflight is not None:
            request, thread, outcome = inflight
            thread.join(KILL_WAIT_FOR_LAUNCH)
            handle = outcome.get("handle") or self._find_quietly(request)
            if handle is not None:
                self.log.info("task killed while launching attempt %s: stopping it", request.attempt)
                self.backend.stop(handle)
            return
        if self._live_handle is not None:
            self.log.info("task killed: stopping attempt %s", self._live_handle.attempt)
            self.backend.stop(self._live_handle)

    def _find_quietly(self, request: LaunchRequest) -> AttemptHandle | None:
        try:
            return self.backend.find(request)
        except Exception as e:  # the launch thread stops it itself once it returns
            self.log.warning("could not look up attempt %s by its token: %s", request.attempt, e)
            return None

    def _validate_rendered(self) -> None:
        """Templated arguments are rendered now: check them as the DAG file's were."""
        try:
            self.backend.validate()
        except BackendConfigError as e:
            raise AirflowFailException(f"{self.task_id}: {e}") from e
        try:
            self._check_deadline(self.deadline)
            if self.checkpoint_prefix:
                self._check_prefix_shape(self.checkpoint_prefix)
            self._set_init_from(self.init_from, self.init_from_missing)
        except SpotTrainingConfigError as e:
            raise AirflowFailException(f"{e}; nothing was launched.") from e

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

    def _read_ledger(self, context: Context) -> RunLedger | None:
        data = self._store(context).get(LEDGER_KEY)
        if not data:
            return None
        try:
            return RunLedger.from_dict(data)
        except (ValueError, TypeError, UnknownVersionError) as e:
            raise AirflowFailException(
                f"the spot-training ledger in the task state store (key {LEDGER_KEY!r}) cannot be read: {e}. "
                "Nothing was launched. Clear the task's state (or trigger a new run) to start a new ledger."
            ) from e

    def _load_ledger(self, context: Context) -> RunLedger:
        ledger = self._read_ledger(context)
        if ledger is None:
            raise AirflowException("no spot-training ledger in the task state store for this task")
        return ledger

    def _save(self, context: Context, ledger: RunLedger) -> None:
        previous = self._store(context).get(LEDGER_KEY)
        self._store(context).set(LEDGER_KEY, ledger.to_dict())
        context["ti"].xcom_push(key=XCOM_LEDGER_KEY, value=ledger.summary())
        emit_ledger_changes(previous, ledger, ti=context["ti"], backend=self.backend)

    def _open_ledger(self, context: Context) -> RunLedger:
        ti = context["ti"]
        ledger = self._read_ledger(context)
        if ledger is not None:
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
            ledger = self._new_ledger(ti)
            self._warm_start(context, ledger)
        for capacity in Capacity:
            price = self.backend.price_per_hour(None, capacity)
            if price is not None:
                ledger.prices[capacity.value] = price
        ledger.spend_cap = self.spend_cap.to_dict() if self.spend_cap.active else None
        ledger.note_try(ti.try_number)
        self._check_writable(ledger.checkpoint_prefix)
        ti.xcom_push(key=XCOM_PREFIX_KEY, value=ledger.checkpoint_prefix)
        CheckpointLink().persist(context, ledger.checkpoint_prefix)
        self._publish_links(context, ledger.attempts)
        self._save(context, ledger)
        return ledger

    def _new_ledger(self, ti: Any) -> RunLedger:
        map_index = getattr(ti, "map_index", -1)
        map_index = -1 if map_index is None else map_index
        try:
            prefix = self.checkpoint_prefix or self._default_prefix(ti, map_index)
            self._check_prefix_shape(prefix)
        except SpotTrainingConfigError as e:
            raise AirflowFailException(f"{e}; nothing was launched.") from e
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
        key = run_key(ti.dag_id, ti.run_id, ti.task_id, map_index, settings.deployment_id())
        return RunLedger(run_key=key, checkpoint_prefix=prefix)

    def _warm_start(self, context: Context, ledger: RunLedger) -> None:
        """Resolve ``init_from`` once for the run; every attempt and retry is handed the same checkpoint."""
        if self.init_from is None:
            return
        try:
            start = warm_start.resolve(self.init_from, context, self.backend)
        except warm_start.WarmStartError as e:
            if self.init_from_missing == "scratch":
                self.log.warning("%s Starting from scratch (init_from_missing='scratch').", e)
                return
            raise AirflowFailException(f"{self.task_id}: {e} Nothing was launched.") from e
        ledger.init_uri, ledger.init_step = start.uri, start.step
        self.log.info("warm start: the run starts from %s (step %s); its own checkpoints go to %s",
                      start.uri, start.step, ledger.checkpoint_prefix)

    def _default_prefix(self, ti: Any, map_index: int) -> str:
        base = default_checkpoint_prefix(settings.checkpoint_base_uri(), ti.dag_id, ti.run_id, ti.task_id,
                                         map_index)
        return self.backend.default_checkpoint_prefix(base)

    def _publish_links(self, context: Context, records: list[AttemptRecord]) -> None:
        """Push every attempt's pages where its extra links read them (XCom is cleared each try)."""
        for record in records:
            if record.number > self.max_attempts:
                continue
            for link in record.links:
                AttemptPageLink(attempt=record.number, label=link["name"]).persist(context, link["url"])

    def _parse_rendered_deadline(self):  # type: ignore[no-untyped-def]
        try:
            return parse_deadline(self.deadline)
        except DeadlineError as e:
            raise AirflowFailException(f"{self.task_id}: {e}") from e

    def _check_writable(self, prefix: str) -> None:
        try:
            CheckpointManager(prefix, storage_options=self.backend.checkpoint_storage_options()).check_writable()
        except CheckpointError as e:
            raise AirflowFailException(str(e)) from e
        except (ValueError, ImportError) as e:
            raise AirflowFailException(
                f"checkpoint_prefix {prefix!r} cannot be opened ({e}). Use a local path or an fsspec URL "
                "whose filesystem is installed (s3:// needs s3fs, gs:// needs gcsfs)."
            ) from e

    def _latest_checkpoint(self, ledger: RunLedger) -> CheckpointInfo | None:
        try:
            latest = CheckpointManager(
                ledger.checkpoint_prefix, keep_last=None, storage_options=self.backend.checkpoint_storage_options()
            ).latest()
        except Exception as e:  # informative only
            self.log.warning("could not read checkpoints under %s: %s", ledger.checkpoint_prefix, e)
            return None
        if latest is None:
            return None
        record = latest.record
        return CheckpointInfo(step=record.step, total_steps=record.total_steps, committed_at=record.committed_at,
                              reason=record.reason, attempt=record.attempt, token=record.token)

    def _progress_step(self, ledger: RunLedger, record: AttemptRecord) -> int | None:
        try:
            return read_progress(ledger.checkpoint_prefix, record.number, record.token,
                                 **self.backend.checkpoint_storage_options())
        except Exception as e:  # informative only
            self.log.warning("could not read attempt %s's progress record: %s", record.number, e)
            return None

    # =====================================================================================
    # deciding and launching
    # =====================================================================================
    def _job_state(self, ledger: RunLedger, event: Event, spot_unavailable: bool) -> JobState:
        now = time.time()
        launched = [a for a in ledger.attempts if a.outcome is not AttemptState.CAPACITY_UNAVAILABLE]
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

    def _decide(self, ledger: RunLedger, event: Event, spot_unavailable: bool) -> Decision:
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

    def _check_caps(self, ledger: RunLedger) -> None:
        """Fail (without retrying) when a cap or the deadline says no further launch may happen."""
        launched = [a for a in ledger.attempts if a.outcome is not AttemptState.CAPACITY_UNAVAILABLE]
        if len(launched) >= self.max_attempts:
            raise AirflowFailException(
                f"max_attempts={self.max_attempts} reached ({ledger.preemptions} preemption(s)); not launching "
                "again. Raise max_attempts, or lower max_preemptions to escalate to on-demand sooner."
            )
        if ledger.deadline is not None and time.time() >= ledger.deadline:
            raise AirflowFailException(
                f"the deadline ({_instant(ledger.deadline)}) has passed; not launching another attempt "
                f"({len(launched)} attempt(s), {ledger.preemptions} preemption(s) so far; checkpoints under "
                f"{ledger.checkpoint_prefix}). Trigger a new run with a later deadline to carry on."
            )

    def _next_attempt(self, context: Context, ledger: RunLedger, event: Event,
                      spot_unavailable: bool = False) -> Any:
        self._check_caps(ledger)
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

    def _request(self, context: Context, ledger: RunLedger, record: AttemptRecord) -> LaunchRequest:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        contract = Contract(
            checkpoint_uri=ledger.checkpoint_prefix,
            attempt=record.number,
            capacity=record.capacity,
            preemptions=sum(a.preemptions for a in ledger.attempts[: record.number - 1]),
            run_key=ledger.run_key,
            result_uri=posixpath.join(ledger.checkpoint_prefix.rstrip("/"), "_results",
                                      f"attempt-{record.number}.json"),
            token=record.token,
            num_nodes=record.nodes,
            init_uri=ledger.init_uri or "",
        )
        labels = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": str(-1 if map_index is None else map_index),
            "attempt": str(record.number),
            "run_key": ledger.run_key,
        }
        deployment = settings.deployment_id()
        if deployment:
            labels["deployment"] = deployment
        return LaunchRequest(contract=contract, capacity=Capacity(record.capacity), token=record.token,
                             labels=labels, pool_order=tuple(record.pool_order or ()))

    def _check_spend(self, context: Context, ledger: RunLedger, capacity: Capacity, number: int) -> None:
        """Refuse (and fail the task) a launch whose projected cost would cross the spend cap."""
        if not self.spend_cap.applies_to(capacity):
            return
        now = time.time()
        price = projection_price(capacity, self._projection_prices(ledger))
        if price is None:
            raise AirflowFailException(f"{self.task_id}: {missing_price(capacity)}")
        state = self._job_state(ledger, Event.START, spot_unavailable=False)
        remaining = state.remaining_work if state.remaining_work is not None else self.expected_runtime or 0.0
        projected = projected_attempt_cost(remaining, self.restart_overhead, price)
        spent = spend_so_far(ledger, now)
        refusal = self.spend_cap.refusal(spent, projected, capacity, number)
        if refusal is None:
            return
        ledger.decisions.append({"at": now, "event": "spend_cap", "action": "refused", "reason": refusal,
                                 "capacity": capacity.value, "spent": spent.to_dict(),
                                 "projected": round(projected, 6)})
        self._save(context, ledger)
        raise AirflowFailException(refusal)

    # -- pool health -------------------------------------------------------------------------
    def _pool_rule(self, record: AttemptRecord) -> PoolHealthRule | None:
        """The pool health rule for ``record``'s launch; ``None`` when it is off, the backend has no
        ladder, or the launch is on-demand (never reclaimed: it walks the ladder in its configured order)."""
        cooldown = self.pool_cooldown if self.pool_cooldown is not None else settings.pool_cooldown()
        if not cooldown or record.capacity != Capacity.SPOT.value or len(self.backend.capacity_ladder()) < 2:
            return None
        return PoolHealthRule(cooldown=cooldown, window=max(settings.pool_health_window(), cooldown))

    def _pool_store(self, rule: PoolHealthRule) -> PoolHealthStore:
        if self._pool_health_store is None:
            self._pool_health_store = PoolHealthStore(self.backend.pool_health_scope(), rule)
        return self._pool_health_store

    def _choose_pools(self, ledger: RunLedger, record: AttemptRecord) -> None:
        """Rank the backend's ladder for this attempt's launch; the order and its reason go into the record."""
        rule = self._pool_rule(record)
        if rule is None:
            return
        ladder = self.backend.capacity_ladder()
        seen = self._pool_store(rule).observations(ladder) + ledger.pool_observations()
        ranking = rule.rank(ladder, seen, time.time())
        record.pool_order, record.pool_reason = ranking.order, ranking.reason
        self.log.info("pool health: attempt %s tries %s (%s)", record.number, ", ".join(ranking.order),
                      ranking.reason)

    def _observe_pools(self, record: AttemptRecord, pools: list[str]) -> None:
        """Pools that had no capacity for this attempt's launch: in the record and the shared store."""
        record.pools_without_capacity = list(pools)
        rule = self._pool_rule(record)
        if rule is None or not pools:
            return
        at = record.launched_at or time.time()
        self._pool_store(rule).add([PoolObservation(pool, PoolEvent.NO_CAPACITY, at) for pool in pools], time.time())

    def _observe_reclaim(self, record: AttemptRecord) -> None:
        """A preempted attempt's pool reclaimed it: into the shared store (the ledger has it already)."""
        if record.outcome is not AttemptState.PREEMPTED or not record.pool:
            return
        rule = self._pool_rule(record)
        if rule is None:
            return
        at = record.ended_at or time.time()
        self._pool_store(rule).add([PoolObservation(record.pool, PoolEvent.RECLAIMED, at)], time.time())

    def _projection_prices(self, ledger: RunLedger) -> dict[str, float]:
        """The ledger's prices, on-demand raised to the dearest pool's the configuration names (a launch
        may land in any pool of the ladder)."""
        prices = dict(ledger.prices)
        configured = self.backend.configured_price(Capacity.ON_DEMAND)
        if configured is not None:
            prices[Capacity.ON_DEMAND.value] = max(configured, prices.get(Capacity.ON_DEMAND.value, 0.0))
        return prices

    def _launch(self, context: Context, ledger: RunLedger, capacity: Capacity) -> Any:
        number = ledger.next_attempt_number()
        self._check_spend(context, ledger, capacity, number)
        checkpoint = self._latest_checkpoint(ledger)
        start_step = checkpoint.step if checkpoint else None
        record = AttemptRecord(
            number=number,
            capacity=capacity.value,
            token=attempt_token(ledger.run_key, number),
            try_number=context["ti"].try_number,
            launched_at=time.time(),
            start_step=start_step,
            checkpoint_step=start_step,
            total_steps=checkpoint.total_steps if checkpoint else None,
            nodes=self.num_nodes,
        )
        self._choose_pools(ledger, record)
        ledger.attempts.append(record)
        # Persist before launching: a worker that dies inside launch() leaves a record whose
        # token makes the next try's launch() return the same attempt instead of a second one.
        self._save(context, ledger)
        return self._start(context, ledger, record)

    def _start(self, context: Context, ledger: RunLedger, record: AttemptRecord) -> Any:
        request = self._request(context, ledger, record)
        try:
            handle = self._launch_watched(request)
        except CapacityUnavailable as e:
            record.outcome, record.reason, record.ended_at = AttemptState.CAPACITY_UNAVAILABLE, str(e), time.time()
            self._observe_pools(record, e.pools_without_capacity)
            self._save(context, ledger)
            self.log.warning("attempt %s: no %s capacity: %s", record.number, record.capacity, e)
            return self._after_no_capacity(context, ledger, e)
        except CloudActionRequired as e:
            record.outcome, record.reason, record.ended_at = AttemptState.FAILED, str(e), time.time()
            self._save(context, ledger)
            raise AirflowFailException(str(e)) from e
        self._record_launch(context, ledger, record, handle)
        self.log.info(
            "launched attempt %s on %s capacity (token %s, %s preemption(s) so far), checkpoints under %s",
            record.number, record.capacity, record.token, ledger.preemptions, ledger.checkpoint_prefix,
        )
        return self._wait_for_attempt(context, ledger, record)

    def _launch_watched(self, request: LaunchRequest) -> AttemptHandle:
        """``backend.launch`` in a thread the worker waits for, so that ``on_kill`` can stop its result."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["handle"] = self.backend.launch(request)
            except BaseException as e:  # handed to the waiting thread below
                outcome["error"] = e

        thread = threading.Thread(target=run, name=f"launch-attempt-{request.attempt}", daemon=True)
        self._inflight = (request, thread, outcome)
        try:
            thread.start()
            thread.join()
        finally:
            self._inflight = None
        if "error" in outcome:
            raise outcome["error"]
        handle: AttemptHandle = outcome["handle"]
        if self._killed.is_set():  # killed while launching: on_kill may not have seen the handle
            self.backend.stop(handle)
            raise AirflowException(f"the task was killed while attempt {request.attempt} launched; it was stopped")
        return handle

    def _record_launch(self, context: Context, ledger: RunLedger, record: AttemptRecord,
                       handle: AttemptHandle) -> None:
        record.handle = handle.to_dict()
        record.outcome = AttemptState.RUNNING
        record.pool = handle.pool
        record.price_per_hour = self.backend.price_per_hour(handle, Capacity(record.capacity))
        record.links = [link.to_dict() for link in self.backend.attempt_links(handle)]
        if not record.pools_without_capacity:
            self._observe_pools(record, self.backend.pools_without_capacity(handle))
        if ledger.first_launch_at is None:
            ledger.first_launch_at = record.launched_at
            deadline = self._parse_rendered_deadline()
            if deadline is not None:
                ledger.deadline = deadline.resolve(ledger.first_launch_at)
        self._publish_links(context, [record])
        self._save(context, ledger)

    def _after_no_capacity(self, context: Context, ledger: RunLedger, error: CapacityUnavailable) -> Any:
        """The one rule for "no capacity", whatever the backend.

        Spot: the policy decides (wait or escalate); the total spot wait is capped by
        ``max_spot_wait``. On-demand: retried every ``capacity_retry_interval`` for at most
        ``max_on_demand_wait``, then the task fails naming the pools. Either way at most
        ``max_capacity_attempts`` launches may find no capacity.
        """
        misses = [a for a in ledger.attempts if a.outcome is AttemptState.CAPACITY_UNAVAILABLE]
        if len(misses) >= self.max_capacity_attempts:
            raise AirflowFailException(
                f"{len(misses)} launches found no capacity (max_capacity_attempts={self.max_capacity_attempts}); "
                f"the last one: {error}"
            )
        if error.capacity is Capacity.SPOT:
            return self._next_attempt(context, ledger, Event.CAPACITY_UNAVAILABLE, spot_unavailable=True)
        waited = _on_demand_wait(ledger)
        if waited >= self.max_on_demand_wait:
            raise AirflowFailException(
                f"no on-demand capacity for {format_duration(waited)} (max_on_demand_wait="
                f"{format_duration(self.max_on_demand_wait)}); pools tried: {'; '.join(error.pools_tried) or error}. "
                "Add instance types, zones or regions to the backend, or raise the wait."
            )
        self.log.warning("no on-demand capacity in any pool; trying again in %s", format_duration(
            self.capacity_retry_interval))
        return self._wait_for_capacity(context, ledger, self.capacity_retry_interval, method="execute_relaunch")

    def execute_relaunch(self, context: Context, event: Any = None) -> Any:
        """Resume after waiting for on-demand capacity: launch on on-demand again."""
        ledger = self._load_ledger(context)
        self._check_caps(ledger)
        return self._launch(context, ledger, Capacity.ON_DEMAND)

    def _reattach(self, context: Context, ledger: RunLedger, record: AttemptRecord) -> Any:
        request = self._request(context, ledger, record)
        handle = self.backend.load_handle(record.handle) if record.handle else self.backend.find(request)
        if handle is None:
            self.log.info("attempt %s was being launched when the last try ended; launching it idempotently",
                          record.number)
            return self._start(context, ledger, record)
        status = self.backend.describe(handle)
        if record.outcome is AttemptState.LAUNCHING:
            self._record_launch(context, ledger, record, handle)
        if status.is_final:
            self.log.info("attempt %s ended while no one watched: %s", record.number, status.state.value)
            event = AttemptEvent.from_status(status, handle)
            return self._attempt_ended(context, ledger, event, in_new_try=True)
        self.log.info("re-attaching to attempt %s, still %s; not launching another", record.number,
                      status.state.value)
        return self._wait_for_attempt(context, ledger, record)

    # =====================================================================================
    # waiting
    # =====================================================================================
    def _poll_interval(self) -> float:
        return self.poll_interval if self.poll_interval is not None else settings.poll_interval()

    def _handle_of(self, record: AttemptRecord) -> AttemptHandle:
        assert record.handle is not None
        return self.backend.load_handle(record.handle)

    def _wait_for_attempt(self, context: Context, ledger: RunLedger, record: AttemptRecord) -> Any:
        handle = self._handle_of(record)
        if self.deferrable:
            classpath, kwargs = self.backend.serialize()
            self.defer(
                trigger=SpotTrainingTrigger(
                    backend_classpath=classpath,
                    backend_kwargs=kwargs,
                    handle=handle.to_dict(),
                    attempt=record.number,
                    checkpoint_prefix=ledger.checkpoint_prefix,
                    poll_interval=self._poll_interval(),
                    progress_log_interval=self.progress_log_interval or settings.progress_log_interval(),
                    known_preemptions=record.preemptions + record.ignored_interruptions,
                    version=2,
                    **self._tick_kwargs(ledger, record),
                ),
                method_name="execute_complete",
            )
        return self._wait_blocking(context, ledger, record, handle)

    def _wait_blocking(self, context: Context, ledger: RunLedger, record: AttemptRecord,
                       handle: AttemptHandle) -> Any:
        """Blocking mode: hold the worker slot and poll here, with the same rules as the trigger."""
        self.backend.bind_poll_interval(self._poll_interval())
        self._live_handle = handle
        try:
            while True:
                status = self.backend.describe(handle)
                if status.is_final or status.preemptions > record.preemptions + record.ignored_interruptions:
                    break
                time.sleep(self._poll_interval())
        finally:
            self._live_handle = None
        if not status.is_final:
            event = AttemptEvent.from_status(status, handle, kind=EventKind.INTERRUPTED)
            return self._attempt_interrupted(context, ledger, record, event)
        return self._attempt_ended(context, ledger, AttemptEvent.from_status(status, handle), in_new_try=False)

    def _tick_kwargs(self, ledger: RunLedger, record: AttemptRecord) -> dict[str, Any]:
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

    def _wait_for_capacity(self, context: Context, ledger: RunLedger, seconds: float,
                           method: str = "execute_launch") -> Any:
        if self.deferrable:
            from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=seconds)), method_name=method)
        time.sleep(seconds)
        return getattr(self, method)(context)

    # =====================================================================================
    # an attempt was interrupted and restarted in place by its backend, or moved, or lost
    # =====================================================================================
    def _attempt_interrupted(self, context: Context, ledger: RunLedger, record: AttemptRecord,
                             event: AttemptEvent) -> Any:
        """The backend restarts the attempt itself (SageMaker): count, then keep it or escalate."""
        checkpoint = self._note_evidence(ledger, record)
        if _finished_by(checkpoint, record):  # the work was done: an interruption now costs nothing
            self.log.info("attempt %s was interrupted after it committed its final checkpoint (step %s); not "
                          "counted as a preemption", record.number, checkpoint.step)  # type: ignore[union-attr]
            record.ignored_interruptions = event.preemptions - record.preemptions
            self._save(context, ledger)
            return self._wait_for_attempt(context, ledger, record)
        record.preemptions = max(record.preemptions, event.preemptions)
        decision = self._decide(ledger, Event.PREEMPTED, spot_unavailable=False)
        if decision.action is Action.ON_DEMAND and record.capacity == Capacity.SPOT.value:
            ledger.record_decision(decision, Event.PREEMPTED.value, time.time())
            self.log.info("attempt %s interrupted %s time(s); escalating: %s", record.number,
                          record.preemptions, decision.reason)
            self.backend.stop(self._handle_of(record))
            record.outcome, record.ended_at = AttemptState.PREEMPTED, time.time()
            record.reason = f"interrupted {record.preemptions} time(s); stopped to escalate to on-demand"
            self._save(context, ledger)
            return self._launch(context, ledger, Capacity.ON_DEMAND)
        self._save(context, ledger)
        self.log.info("attempt %s interrupted %s time(s); the backend restarts it in place (%s)",
                      record.number, record.preemptions, decision.reason)
        return self._wait_for_attempt(context, ledger, record)

    def _move_back_to_spot(self, context: Context, ledger: RunLedger, record: AttemptRecord,
                           event: AttemptEvent) -> Any:
        """The policy wants spot again: the on-demand attempt checkpoints and stops, spot takes over."""
        decision = Decision(Action.SPOT, event.reason or "the policy moved back to spot")
        handle = self._handle_of(record)
        self.backend.stop(handle)  # a notice first: the training writes a checkpoint
        status = self.backend.describe(handle)
        record.outcome, record.reason = AttemptState.STOPPED, f"moved back to spot: {decision.reason}"
        record.ended_at = status.ended_at or time.time()
        record.started_at = status.started_at or record.started_at or record.launched_at
        self._note_evidence(ledger, record)
        ledger.record_decision(decision, Event.TICK.value, time.time())
        self._save(context, ledger)
        self.log.info("attempt %s on on-demand stopped at step %s: %s", record.number, record.checkpoint_step,
                      decision.reason)
        return self._launch(context, ledger, Capacity.SPOT)

    def _attempt_lost(self, context: Context, ledger: RunLedger, record: AttemptRecord,
                      event: AttemptEvent) -> Any:
        """The trigger could not watch the attempt. Look once more; else hand it to the next try."""
        handle = self._handle_of(record)
        try:
            status = self.backend.describe(handle)
        except Exception as e:
            status = None
            self.log.warning("attempt %s: cannot read its status either: %s", record.number, e)
        if status is not None and status.is_final:
            return self._attempt_ended(context, ledger, AttemptEvent.from_status(status, handle), in_new_try=False)
        ti = context["ti"]
        if ti.try_number > getattr(ti, "max_tries", 0):  # no try left to re-attach: stop it first
            self.log.warning("attempt %s is lost (%s) and no retry is left: stopping it", record.number, event.reason)
            self.backend.stop(handle)
            record.outcome, record.reason, record.ended_at = AttemptState.STOPPED, event.reason, time.time()
            self._note_evidence(ledger, record)
            self._save(context, ledger)
            raise AirflowFailException(f"attempt {record.number} could not be watched ({event.reason}); "
                                       "it was stopped, and checkpoints are kept for a new run")
        raise AirflowException(
            f"attempt {record.number} could not be watched ({event.reason}); it is left running and the next "
            "try re-attaches to it (no second attempt is launched beside it)"
        )

    # =====================================================================================
    # an attempt ended
    # =====================================================================================
    def _note_evidence(self, ledger: RunLedger, record: AttemptRecord) -> CheckpointInfo | None:
        """What the training itself left: the newest checkpoint and its progress record."""
        checkpoint = self._latest_checkpoint(ledger)
        if checkpoint is not None:
            record.checkpoint_step = checkpoint.step
            record.total_steps = checkpoint.total_steps or record.total_steps
        progress = self._progress_step(ledger, record)
        if progress is not None:
            record.progress_step = progress
        return checkpoint

    def _attempt_ended(self, context: Context, ledger: RunLedger, event: AttemptEvent,
                       *, in_new_try: bool) -> Any:
        record = ledger.current
        assert record is not None
        if record.outcome.is_final:
            self.log.warning("attempt %s was already recorded as %s; ignoring a repeated event",
                             record.number, record.outcome.value)
            return self._continue_after(context, ledger, record, in_new_try)
        event = self._settled(event, record)
        state = event.kind.attempt_state
        assert state is not None
        record.reason = redact(event.reason, self._secret_values())  # it may quote the training's stderr
        record.started_at = event.started_at or record.started_at or record.launched_at
        record.ended_at = event.ended_at or time.time()
        counted = max(0, event.preemptions - record.ignored_interruptions)
        record.preemptions = max(counted, 1) if state is AttemptState.PREEMPTED else counted
        self._record_billing(record, event.details)
        record.model_uri = event.details.get("model_uri") or record.model_uri
        checkpoint = self._note_evidence(ledger, record)
        if state is not AttemptState.SUCCEEDED and _finished_by(checkpoint, record):
            state, record.preemptions = AttemptState.SUCCEEDED, 0
            record.reason = (f"the training committed its final checkpoint (step {checkpoint.step}) before the "
                             f"attempt ended ({event.kind.value}: {event.reason})")  # type: ignore[union-attr]
        record.outcome = state
        self._observe_reclaim(record)
        self._save(context, ledger)
        if state is AttemptState.FAILED:
            self._show_training_log(record)  # before the release: some clouds drop a machine's output with it
        if event.kind is not EventKind.SUCCEEDED or self.backend.releases_after_success:
            self._release(record)
        self.log.info(
            "attempt %s on %s ended: %s (%s); checkpoint step %s; %s preemption(s) in total",
            record.number, record.capacity, state.value, record.reason, record.checkpoint_step, ledger.preemptions,
        )
        return self._continue_after(context, ledger, record, in_new_try)

    def _settled(self, event: AttemptEvent, record: AttemptRecord) -> AttemptEvent:
        """The event with the reads its trigger left to the worker done (how the attempt ended)."""
        if event.to_settle is None:
            return event
        handle = self._handle_of(record)
        status = self.backend.settle(handle, event.status())
        return AttemptEvent.from_status(status, handle, checkpoint=event.checkpoint,
                                        progress_step=event.progress_step)

    def _secret_values(self) -> list[str]:
        """Values the training was given that must never be shown: its env entries named like secrets."""
        env = getattr(self.backend, "env", None) or getattr(self.backend, "environment", None) or {}
        return secret_values_of(env)

    def _show_training_log(self, record: AttemptRecord) -> None:
        """The last lines a failed attempt's training printed, redacted, in the task log."""
        try:
            training_log = self.backend.training_log(self._handle_of(record))
        except Exception as e:  # the failure is what matters; its log is a courtesy
            self.log.warning("could not read attempt %s's training log: %s", record.number, e)
            return
        if training_log is None or not training_log.lines:
            self.log.info("attempt %s left no training log to show here; see its links", record.number)
            return
        lines = redact_lines(training_log.lines, self._secret_values())
        self.log.error("the last %d lines of attempt %s's training log (%s):\n%s", len(lines), record.number,
                       training_log.source, "\n".join(f"    {line}" for line in lines))

    @staticmethod
    def _record_billing(record: AttemptRecord, details: dict[str, Any]) -> None:
        if details.get("billable_seconds") is not None:
            record.billable_seconds = float(details["billable_seconds"])
        if details.get("training_seconds") is not None:
            record.training_seconds = float(details["training_seconds"])
        if details.get("on_demand_price") is not None:
            record.on_demand_price_per_hour = float(details["on_demand_price"])

    def _release(self, record: AttemptRecord) -> None:
        """Release whatever an ended attempt still holds (a stopped VM, a stuck job): ``stop`` is idempotent."""
        try:
            self.backend.stop(self._handle_of(record))
        except Exception as e:  # the attempt has ended; its leftovers are reported, not fatal
            self.log.warning("could not release attempt %s's resources: %s", record.number, e)

    def _continue_after(self, context: Context, ledger: RunLedger, record: AttemptRecord,
                        in_new_try: bool) -> Any:
        outcome = record.outcome
        if outcome is AttemptState.SUCCEEDED:
            return self._finish(context, ledger)
        if outcome is AttemptState.PREEMPTED:
            return self._next_attempt(context, ledger, Event.PREEMPTED)
        if outcome is AttemptState.CAPACITY_UNAVAILABLE:
            error = CapacityUnavailable(record.reason, [f"{record.pool or record.capacity}: {record.reason}"],
                                        capacity=Capacity(record.capacity))
            return self._after_no_capacity(context, ledger, error)
        if outcome is AttemptState.STOPPED and in_new_try:
            # stopped while the task was killed; this new try carries on from the checkpoint
            return self._next_attempt(context, ledger, Event.FAILED)
        if outcome is AttemptState.STOPPED:
            raise AirflowException(f"attempt {record.number} was stopped from outside: {record.reason}")
        if in_new_try:
            return self._next_attempt(context, ledger, Event.FAILED)
        raise AirflowException(
            f"attempt {record.number} on {record.capacity} failed: {record.reason}. An Airflow retry resumes "
            f"from {ledger.checkpoint_prefix} with the ledger intact."
        )

    def _finish(self, context: Context, ledger: RunLedger) -> dict[str, Any]:
        record = ledger.current
        summary = ledger.summary()
        if record is not None:
            try:
                metrics = read_metrics(ledger.checkpoint_prefix, record.number,
                                       **self.backend.checkpoint_storage_options())
            except Exception as e:  # metrics are optional
                self.log.warning("could not read the training's metrics: %s", e)
                metrics = None
            summary["metrics"] = metrics or {}
        try:
            summary.update(model_asset.model_locations(ledger, self.backend))
        except Exception as e:  # the training succeeded; where its model is can be looked up by hand
            self.log.warning("could not read the final checkpoint under %s: %s", ledger.checkpoint_prefix, e)
            summary.update(final_checkpoint_uri=None, model_uri=self.backend.model_uri(ledger.checkpoint_prefix))
        model_asset.emit_asset_events(context, self.outlets, summary)
        context["ti"].xcom_push(key=XCOM_LEDGER_KEY, value=summary)
        self.log.info("training finished:\n%s", format_summary(summary))
        self._result = summary
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (extra ``openlineage``): the input data and warm start in, the model out."""
        from airflow_spot_training.operators.lineage import operator_lineage

        return operator_lineage(self._result, self.backend.input_uris(), self.inlets, self.outlets)


def _gang_backends() -> dict[str, bool]:
    """Each backend name and whether it can run gangs (for the message refusing ``num_nodes``)."""
    import importlib

    from airflow_spot_training.backends import BACKENDS

    out = {}
    for kind, classpath in BACKENDS.items():
        module_name, _, name = classpath.rpartition(".")
        try:
            out[kind] = bool(getattr(importlib.import_module(module_name), name).supports_gangs)
        except ImportError:  # a backend whose SDK is not installed here
            out[kind] = False
    return out


def _finished_by(checkpoint: CheckpointInfo | None, record: AttemptRecord) -> bool:
    """Whether ``record``'s attempt itself committed the training's final checkpoint."""
    return checkpoint is not None and checkpoint.is_final and checkpoint.token == record.token


def _on_demand_wait(ledger: RunLedger) -> float:
    """Seconds since the first of the latest run of on-demand launches that found no capacity."""
    first = None
    for attempt in reversed(ledger.attempts):
        if attempt.capacity != Capacity.ON_DEMAND.value or attempt.outcome is not AttemptState.CAPACITY_UNAVAILABLE:
            break
        first = attempt.launched_at
    return time.time() - first if first is not None else 0.0


def _instant(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")
