"""The local backend: run the training as a detached process on this machine.

Made for trying the whole loop with no cloud account, and for tests. Each attempt
runs under a small supervisor process (:mod:`.local_supervisor`) started in its
own session, so it outlives the worker that launched it (a deferred task's worker
exits) and any process on the machine (the triggerer) can watch it through the
attempt's ``status.json``.

A spot attempt is preempted the way a cloud does it: a notice (SIGTERM to the
training), then, after ``notice_seconds``, a hard kill. When preemptions happen
comes from a schedule: a fixed list, committed steps, a seeded random rate, or a trace
in the ``spot-traces`` format (1 = spot available, 0 = reclaimed / unavailable),
replayed with each sample lasting ``seconds_per_sample`` real seconds. On-demand
attempts are never preempted.

A reclaim can also be injected on demand, for fault-injection tests and drills:
:func:`request_preemption` (one attempt) and :func:`preempt_running` (every live
spot attempt under a state directory) drop a ``preempt-now`` file that the
supervisor treats as a reclaim: notice, then hard kill after ``notice_seconds``.

Launch is idempotent on the attempt token: the attempt directory is created under
an exclusive file lock, and a second launch with the same token returns the
attempt that is already there.

What is written to disk: only the declared ``env`` and the environment contract
(``spec.json``), status and logs, all with mode 0600 in 0700 directories. The
training inherits the supervisor's environment without the deployment's own
secrets (``AIRFLOW__*`` configuration, ``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*``).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    ValidationError,
    field_validator,
)

from airflow_spot_training.backends.base import (
    CHECKPOINT_SYNC_DOC,
    AttemptHandle,
    AttemptLink,
    AttemptState,
    AttemptStatus,
    BackendConfigError,
    CapacityUnavailable,
    CheckpointSync,
    TAIL_LINES,
    LaunchRequest,
    SpotBackend,
    TrainingLog,
    argument,
    check_env_names,
)
from airflow_spot_training.core.folder_sync import LOCAL_CHECKPOINT_DIR_NAME
from airflow_spot_training.core.policy import Capacity

STATUS_FILE = "status.json"
LAUNCH_FILE = "launch.json"
SPEC_FILE = "spec.json"
LOG_FILE = "training.log"
#: bytes read from the end of a log for its last lines
LOG_TAIL_BYTES = 256 * 1024
#: environment variables of the deployment itself, never handed to a training
PRIVATE_ENV_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")


# -- preemption schedules ----------------------------------------------------------------
class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _NoticedSchedule(_Schedule):
    #: per attempt, replaces the backend's ``notice_seconds`` (``0``: a hard kill, no notice)
    notice_seconds: list[NonNegativeFloat | None] | None = None

    def notice_for(self, attempt: int) -> float | None:
        notices = self.notice_seconds or []
        return notices[attempt - 1] if attempt - 1 < len(notices) else None


class FixedPreemptions(_NoticedSchedule):
    """Spot attempt N is preempted ``after_seconds[N-1]`` seconds after it starts (``None``: never)."""

    kind: Literal["fixed"] = "fixed"
    after_seconds: list[NonNegativeFloat | None]


class StepPreemptions(_NoticedSchedule):
    """Spot attempt N is reclaimed once a checkpoint at step ``at_steps[N-1]`` or later is committed."""

    kind: Literal["steps"] = "steps"
    at_steps: list[NonNegativeInt | None]

    @field_validator("at_steps", mode="before")
    @classmethod
    def _whole_steps(cls, value: Any) -> Any:
        bad = [v for v in value or [] if v is not None and (not isinstance(v, int) or isinstance(v, bool))]
        if bad:
            raise ValueError(f"step_preemptions takes non-negative integers or None, got {bad!r}")
        return value


class RatePreemptions(_Schedule):
    """Preemptions arrive at random at ``per_hour`` on average; reproducible for a seed."""

    kind: Literal["rate"] = "rate"
    per_hour: NonNegativeFloat
    seed: int = 0


class TracePreemptions(_Schedule):
    """A spot-traces file replayed in real time: each sample lasts ``seconds_per_sample``."""

    kind: Literal["trace"] = "trace"
    path: str
    seconds_per_sample: PositiveFloat = 1.0
    offset: int = 0

    @field_validator("path")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not Path(value).is_file():
            raise ValueError(f"trace file {value!r} does not exist")
        return value

    def samples(self) -> list[int]:
        with open(self.path) as f:
            return [int(v) for v in json.load(f)["data"]]


PreemptionSchedule = Annotated[
    Union[FixedPreemptions, StepPreemptions, RatePreemptions, TracePreemptions], Field(discriminator="kind")
]


def _schedule(kind: type[_Schedule], **fields: Any) -> Any:
    try:
        return kind(**fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg'].removeprefix('Value error, ')}"
                             for p in e.errors())
        raise BackendConfigError(f"preemptions: {problems}") from None


def fixed_preemptions(after_seconds: list[float | None],
                      notice_seconds: list[float | None] | None = None) -> FixedPreemptions:
    """Spot attempt N is preempted ``after_seconds[N-1]`` seconds after it starts (``None``: never).

    ``notice_seconds[N-1]``, when given and not ``None``, replaces the backend's
    ``notice_seconds`` for that attempt (``0``: a hard kill with no notice at all)."""
    return _schedule(FixedPreemptions, after_seconds=list(after_seconds), notice_seconds=notice_seconds)


def step_preemptions(at_steps: list[int | None], notice_seconds: list[float | None] | None = None) -> StepPreemptions:
    """Spot attempt N is reclaimed once the training has committed a checkpoint at step
    ``at_steps[N-1]`` or later (``None``: never). Reproducible whatever the machine's speed,
    which makes it the schedule for demos and tests. ``notice_seconds``: as in
    :func:`fixed_preemptions`."""
    return _schedule(StepPreemptions, at_steps=list(at_steps), notice_seconds=notice_seconds)


def random_preemptions(per_hour: float, seed: int = 0) -> RatePreemptions:
    """Preemptions arrive at random at ``per_hour`` on average; reproducible for a seed."""
    return _schedule(RatePreemptions, per_hour=per_hour, seed=seed)


def trace_preemptions(path: str, seconds_per_sample: float = 1.0, offset: int = 0) -> TracePreemptions:
    """Replay a spot-traces file: each sample lasts ``seconds_per_sample`` real seconds."""
    return _schedule(TracePreemptions, path=str(path), seconds_per_sample=seconds_per_sample, offset=offset)


@dataclass(frozen=True, kw_only=True)
class LocalHandle(AttemptHandle):
    """A local attempt: its directory and its supervisor process."""

    attempt_dir: str
    supervisor_pid: int
    preempt_at: float | None = None


class LocalBackend(SpotBackend):
    """Run training as a detached local process, with simulated spot preemptions."""

    kind = "local"
    handle_type = LocalHandle
    default_restart_overhead = 3.0
    positional_argument = "command"
    link_labels = ("Training log",)
    supports_gangs = True

    command: list[str] = argument(
        doc="the training command, as a list of strings, e.g. "
            "[sys.executable, '-m', 'airflow_spot_training.examples.regression']",
        templated=True, example=["true"])
    env: dict[str, str] = argument(
        {}, "extra environment variables for the training (the contract is added)", templated=True)
    cwd: str | None = argument(None, "working directory of the training")
    preemptions: PreemptionSchedule | None = argument(
        None, "when spot attempts are reclaimed: fixed_preemptions([...]), step_preemptions([...]), "
              "random_preemptions(per_hour, seed) or trace_preemptions(path); None never preempts")
    notice_seconds: NonNegativeFloat = argument(
        5.0, "seconds between the notice (SIGTERM) and the hard kill (AWS gives 120, GCP 30); 0: a hard kill "
             "with no notice. A schedule's own notice_seconds list overrides it per attempt")
    state_dir: str | None = argument(
        None, "where attempt directories live (default: [spot_training] local_state_dir)")
    spot_price_per_hour: PositiveFloat | None = argument(None, "USD per hour used for cost estimates of spot attempts")
    on_demand_price_per_hour: PositiveFloat | None = argument(
        None, "USD per hour used for on-demand attempts and savings")
    checkpoint_sync: CheckpointSync = argument(
        None, CHECKPOINT_SYNC_DOC + "; the folder is <attempt directory>/checkpoint unless local_dir is set")

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("the training command must not be empty, e.g. "
                             "[sys.executable, '-m', 'airflow_spot_training.examples.regression']")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(check_env_names(value))

    @field_validator("preemptions", mode="before")
    @classmethod
    def _known_schedule(cls, value: Any) -> Any:
        if value is None or isinstance(value, _Schedule):
            return value
        if not isinstance(value, dict) or value.get("kind") not in ("fixed", "steps", "rate", "trace"):
            raise ValueError(
                f"{value!r} is not a schedule: build one with fixed_preemptions([...]), step_preemptions([...]), "
                "random_preemptions(per_hour, seed) or trace_preemptions(path)."
            )
        return value

    # -- paths ---------------------------------------------------------------------------
    def _state_root(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        from airflow_spot_training.settings import local_state_dir

        return Path(local_state_dir())

    def _attempt_dir(self, request: LaunchRequest) -> Path:
        return self._state_root() / request.contract.run_key / f"attempt-{request.attempt}"

    # -- schedule ------------------------------------------------------------------------
    def _run_epoch(self, run_dir: Path) -> float:
        """The instant trace time 0 maps to: the run's first launch, fixed once per run."""
        marker = run_dir / "trace_epoch"
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(repr(time.time()))
        except FileExistsError:
            pass
        return float(marker.read_text() or time.time())

    def _preempt_at(self, request: LaunchRequest, run_dir: Path, now: float) -> float | None:
        schedule = self.preemptions
        if request.capacity is not Capacity.SPOT or schedule is None:
            return None
        index = request.attempt - 1
        if isinstance(schedule, FixedPreemptions):
            after = schedule.after_seconds
            return now + float(after[index]) if index < len(after) and after[index] is not None else None
        if isinstance(schedule, RatePreemptions):
            if schedule.per_hour <= 0:
                return None
            rng = random.Random(f"{schedule.seed}:{request.contract.run_key}:{request.attempt}")
            return now + rng.expovariate(schedule.per_hour / 3600.0)
        if isinstance(schedule, TracePreemptions):
            return self._trace_preempt_at(schedule, run_dir, now)
        return None  # StepPreemptions: the supervisor watches the commit records

    def _trace_preempt_at(self, schedule: TracePreemptions, run_dir: Path, now: float) -> float | None:
        data = schedule.samples()
        epoch = self._run_epoch(run_dir)
        first = schedule.offset + int(math.floor(max(0.0, now - epoch) / schedule.seconds_per_sample))
        if data[first % len(data)] == 0:
            raise CapacityUnavailable(f"trace {Path(schedule.path).name} has no spot capacity at sample {first}",
                                      pools_tried=["local: no spot capacity in the replayed trace"])
        for k in range(1, len(data) + 1):
            if data[(first + k) % len(data)] == 0:
                return epoch + (first + k - schedule.offset) * schedule.seconds_per_sample
        return None

    def _preempt_at_step(self, request: LaunchRequest) -> int | None:
        schedule = self.preemptions
        if request.capacity is not Capacity.SPOT or not isinstance(schedule, StepPreemptions):
            return None
        index = request.attempt - 1
        return schedule.at_steps[index] if index < len(schedule.at_steps) else None

    # -- worker side ----------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> LocalHandle:
        attempt_dir = self._attempt_dir(request)
        attempt_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(attempt_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = self._read_handle(attempt_dir)
            if existing is not None:
                if existing.token == request.token:
                    return existing  # already launched under this token: re-attach
                raise BackendConfigError(
                    f"attempt directory {attempt_dir} belongs to token {existing.token!r}, not "
                    f"{request.token!r}; is state_dir shared between two deployments?"
                )
            return self._start(request, attempt_dir)

    def _start(self, request: LaunchRequest, attempt_dir: Path) -> LocalHandle:
        now = time.time()
        preempt_at = self._preempt_at(request, attempt_dir.parent, now)
        spec = {
            "preempt_at_step": self._preempt_at_step(request),
            "command": self._command(attempt_dir),
            "capacity": request.capacity.value,
            "env": {**self.env, **request.contract.to_env()},  # declared variables only
            "node_env": _node_envs(request),
            "attempt": request.attempt,
            "cwd": self.cwd,
            "preempt_at": preempt_at,
            "notice_seconds": self._notice_seconds(request),
            "stop_seconds": float(self.notice_seconds),
        }
        write_private_json(attempt_dir / SPEC_FILE, spec)
        with open_private(attempt_dir / "supervisor.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "airflow_spot_training.backends.local_supervisor", str(attempt_dir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=training_environment(),
                start_new_session=True,  # outlives the worker, own process group
                close_fds=True,
            )
        # reap it if this process outlives it (e.g. `airflow dags test`), so no zombie is left
        threading.Thread(target=proc.wait, daemon=True).start()
        handle = LocalHandle(
            backend=self.kind, token=request.token, attempt=request.attempt, capacity=request.capacity.value,
            launched_at=now, pool="local", attempt_dir=str(attempt_dir), supervisor_pid=proc.pid,
            preempt_at=preempt_at,
        )
        write_private_json(attempt_dir / LAUNCH_FILE, handle.to_dict())
        return handle

    def _command(self, attempt_dir: Path) -> list[str]:
        """The training command, wrapped by the synced checkpoint folder when it is on."""
        if self.checkpoint_sync is None:
            return list(self.command)
        return self.checkpoint_sync.wrap(self.command, python=sys.executable,
                                         default_dir=str(attempt_dir / LOCAL_CHECKPOINT_DIR_NAME))

    def _notice_seconds(self, request: LaunchRequest) -> float:
        schedule = self.preemptions
        override = schedule.notice_for(request.attempt) if isinstance(schedule, _NoticedSchedule) else None
        return float(self.notice_seconds if override is None else override)

    def _read_handle(self, attempt_dir: Path) -> LocalHandle | None:
        data = _read_json(attempt_dir / LAUNCH_FILE)
        return LocalHandle.from_dict(data) if data else None

    def find(self, request: LaunchRequest) -> LocalHandle | None:
        handle = self._read_handle(self._attempt_dir(request))
        return handle if handle is not None and handle.token == request.token else None

    def describe(self, handle: AttemptHandle) -> AttemptStatus:
        local = self.load_handle(handle)
        assert isinstance(local, LocalHandle)
        status_path = Path(local.attempt_dir) / STATUS_FILE
        status = _read_status(status_path)
        if status is not None and status.is_final:
            return status
        if not _alive(local.supervisor_pid):
            # it may have written its final status between our read and the liveness check
            status = _read_status(status_path)
            if status is not None and status.is_final:
                return status
            return AttemptStatus(state=AttemptState.FAILED,
                                 reason="the local supervisor process vanished (machine restart or kill -9)",
                                 ended_at=time.time())
        if status is not None:
            return status
        return AttemptStatus(state=AttemptState.RUNNING, reason="starting", started_at=local.launched_at)

    def stop(self, handle: AttemptHandle) -> None:
        local = self.load_handle(handle)
        assert isinstance(local, LocalHandle)
        pid, attempt_dir = int(local.supervisor_pid), Path(local.attempt_dir)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.time() + float(self.notice_seconds) + 10
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
        # belt and braces: nothing of this attempt's process group may survive a stop
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        status = _read_json(attempt_dir / STATUS_FILE)
        if not status or status.get("state") not in {s.value for s in AttemptState if s.is_final}:
            write_private_json(attempt_dir / STATUS_FILE, {**(status or {}), "state": AttemptState.STOPPED.value,
                                                            "reason": "stopped on request", "ended_at": time.time()})

    def price_per_hour(self, handle: AttemptHandle | None, capacity: Capacity) -> float | None:
        return self.spot_price_per_hour if capacity is Capacity.SPOT else self.on_demand_price_per_hour

    def spot_available(self, handle: AttemptHandle) -> bool | None:
        """From the replayed trace's current sample for this run; always, without a trace."""
        schedule = self.preemptions
        if not isinstance(schedule, TracePreemptions):
            return True
        local = self.load_handle(handle)
        assert isinstance(local, LocalHandle)
        data = schedule.samples()
        epoch = self._run_epoch(Path(local.attempt_dir).parent)
        elapsed = max(0.0, time.time() - epoch)
        index = schedule.offset + int(math.floor(elapsed / schedule.seconds_per_sample))
        return bool(data[index % len(data)])

    def attempt_links(self, handle: AttemptHandle) -> list[AttemptLink]:
        local = self.load_handle(handle)
        assert isinstance(local, LocalHandle)
        return [AttemptLink("Training log", f"file://{self.log_path(local)}")]

    def training_log(self, handle: AttemptHandle, lines: int = TAIL_LINES) -> TrainingLog | None:
        path = Path(self.log_path(handle))
        if not path.exists():
            return None
        with open(path, "rb") as log:
            log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace")
        return TrainingLog.from_text(str(path), text, lines)

    def log_path(self, handle: AttemptHandle) -> str:
        local = self.load_handle(handle)
        assert isinstance(local, LocalHandle)
        return str(Path(local.attempt_dir) / LOG_FILE)


def _node_envs(request: LaunchRequest) -> list[dict[str, str]]:
    """Each node's own variables: its rank and rank 0's loopback address (one empty entry for one node)."""
    if request.num_nodes == 1:
        return [{}]
    port = _free_loopback_port()
    return [{**request.node_contract(rank, "127.0.0.1", port).gang_env(), "GLOO_SOCKET_IFNAME": "lo"}
            for rank in range(request.num_nodes)]


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def training_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a local training inherits: this process's, without the deployment's secrets."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not k.startswith(PRIVATE_ENV_PREFIXES)}


def request_preemption(attempt_dir: str | os.PathLike[str], node: int | None = None) -> bool:
    """Make a running spot attempt be reclaimed now (notice, then hard kill).

    ``node``: in a gang, the node reclaimed (default: node (attempt - 1) mod N); it matters
    when the reclaim comes with no notice (that node dies at once, the others get the notice).
    Returns ``False`` (and changes nothing) when the attempt is on-demand or has ended.
    """
    from airflow_spot_training.backends.local_supervisor import PREEMPT_NOW_FILE

    attempt_dir = Path(attempt_dir)
    spec = _read_json(attempt_dir / SPEC_FILE) or {}
    capacity = spec.get("capacity") or (spec.get("env") or {}).get("SPOT_TRAINING_CAPACITY")
    status = _read_status(attempt_dir / STATUS_FILE)
    if capacity != Capacity.SPOT.value or (status is not None and status.is_final):
        return False
    launch = _read_json(attempt_dir / LAUNCH_FILE)
    if launch is None or not _alive(int(launch["supervisor_pid"])):
        return False
    (attempt_dir / PREEMPT_NOW_FILE).write_text("" if node is None else str(int(node)))
    return True


def preempt_running(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Reclaim every live spot attempt under ``state_dir`` at once; return their directories."""
    preempted = []
    for launch_file in sorted(Path(state_dir).glob(f"*/attempt-*/{LAUNCH_FILE}")):
        if request_preemption(launch_file.parent):
            preempted.append(launch_file.parent)
    return preempted


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        try:
            os.kill(int(pid), 0)
            return True
        except OSError:
            return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # a torn write of our own files cannot happen (atomic replace); a foreign one can
        return None
    return data if isinstance(data, dict) else None


def _read_status(path: Path) -> AttemptStatus | None:
    """The supervisor's status record; transient read errors (other than absence) propagate."""
    data = _read_json(path)
    return AttemptStatus.from_dict(data) if data else None


def open_private(path: Path, mode: str = "wb") -> Any:
    """Open a file readable by its owner only (0600), whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, 0o600), mode)


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a rename) as a 0600 file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open_private(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
