"""The local backend: run the training as a detached process on this machine.

Made for trying the whole loop with no cloud account, and for tests. Each attempt
runs under a small supervisor process (:mod:`.local_supervisor`) started in its
own session, so it outlives the worker that launched it (a deferred task's worker
exits) and any process on the machine (the triggerer) can watch it through the
attempt's ``status.json``.

A spot attempt is preempted the way a cloud does it: a notice (SIGTERM to the
training), then, after ``notice_seconds``, a hard kill. When preemptions happen
comes from a schedule: a fixed list, a seeded random rate, or a trace in the
``spot-traces`` format (1 = spot available, 0 = reclaimed / unavailable), replayed
with each sample lasting ``seconds_per_sample`` real seconds. On-demand attempts
are never preempted.

A reclaim can also be injected on demand, for fault-injection tests and drills:
:func:`request_preemption` (one attempt) and :func:`preempt_running` (every live
spot attempt under a state directory) drop a ``preempt-now`` file that the
supervisor treats as a reclaim: notice, then hard kill after ``notice_seconds``.

Launch is idempotent on the attempt token: the attempt directory is created under
an exclusive file lock, and a second launch with the same token returns the
attempt that is already there.
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
from pathlib import Path
from typing import Any

from airflow_spot_training.backends.base import (
    FAILED,
    FINAL_STATES,
    RUNNING,
    STOPPED,
    AttemptStatus,
    BackendConfigError,
    LaunchRequest,
    SpotBackend,
    SpotCapacityUnavailable,
)
from airflow_spot_training.core.folder_sync import (
    LOCAL_CHECKPOINT_DIR_NAME,
    FolderSync,
    FolderSyncConfigError,
)
from airflow_spot_training.core.policy import Capacity

STATUS_FILE = "status.json"
LAUNCH_FILE = "launch.json"
LOG_FILE = "training.log"


# -- preemption schedules ----------------------------------------------------------------
def fixed_preemptions(after_seconds: list[float | None],
                      notice_seconds: list[float | None] | None = None) -> dict[str, Any]:
    """Spot attempt N is preempted ``after_seconds[N-1]`` seconds after it starts (``None``: never).

    ``notice_seconds[N-1]``, when given and not ``None``, replaces the backend's
    ``notice_seconds`` for that attempt (``0``: a hard kill with no notice at all)."""
    return _with_notices({"kind": "fixed", "after_seconds": list(after_seconds)}, notice_seconds)


def step_preemptions(at_steps: list[int | None], notice_seconds: list[float | None] | None = None) -> dict[str, Any]:
    """Spot attempt N is reclaimed once the training has committed a checkpoint at step
    ``at_steps[N-1]`` or later (``None``: never). Reproducible whatever the machine's speed,
    which makes it the schedule for demos and tests. ``notice_seconds``: as in
    :func:`fixed_preemptions`."""
    return _with_notices({"kind": "steps", "at_steps": list(at_steps)}, notice_seconds)


def _with_notices(schedule: dict[str, Any], notice_seconds: list[float | None] | None) -> dict[str, Any]:
    if notice_seconds is not None:
        schedule["notice_seconds"] = list(notice_seconds)
    return schedule


def random_preemptions(per_hour: float, seed: int = 0) -> dict[str, Any]:
    """Preemptions arrive at random at ``per_hour`` on average; reproducible for a seed."""
    return {"kind": "rate", "per_hour": per_hour, "seed": seed}


def trace_preemptions(path: str, seconds_per_sample: float = 1.0, offset: int = 0) -> dict[str, Any]:
    """Replay a spot-traces file: each sample lasts ``seconds_per_sample`` real seconds."""
    return {"kind": "trace", "path": str(path), "seconds_per_sample": seconds_per_sample, "offset": offset}


def _validate_schedule(schedule: dict[str, Any] | None) -> None:
    if schedule is None:
        return
    if not isinstance(schedule, dict) or schedule.get("kind") not in ("fixed", "steps", "rate", "trace"):
        raise BackendConfigError(
            f"preemptions={schedule!r} is not a schedule: build one with fixed_preemptions([...]), "
            "step_preemptions([...]), random_preemptions(per_hour, seed) or trace_preemptions(path)."
        )
    _validate_notices(schedule)
    kind = schedule["kind"]
    if kind == "fixed":
        for v in schedule.get("after_seconds", []):
            if v is not None and (not isinstance(v, (int, float)) or v < 0):
                raise BackendConfigError(
                    f"preemptions: fixed after_seconds must be non-negative numbers or None, got {v!r}"
                )
    elif kind == "steps":
        for v in schedule.get("at_steps", []):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise BackendConfigError(f"preemptions: step_preemptions takes non-negative integers or None, got {v!r}")
    elif kind == "rate":
        if not isinstance(schedule.get("per_hour"), (int, float)) or schedule["per_hour"] < 0:
            raise BackendConfigError(f"preemptions: per_hour must be 0 or more, got {schedule.get('per_hour')!r}")
    elif kind == "trace":
        path = Path(schedule["path"])
        if not path.is_file():
            raise BackendConfigError(f"preemptions: trace file {str(path)!r} does not exist")
        if schedule.get("seconds_per_sample", 1) <= 0:
            raise BackendConfigError("preemptions: seconds_per_sample must be positive")


def _validate_notices(schedule: dict[str, Any]) -> None:
    for v in schedule.get("notice_seconds") or []:
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise BackendConfigError(f"preemptions: notice_seconds must be non-negative numbers or None, got {v!r}")


def _load_trace(path: str) -> list[int]:
    with open(path) as f:
        return [int(v) for v in json.load(f)["data"]]


class LocalBackend(SpotBackend):
    """Run training as a detached local process, with simulated spot preemptions.

    :param command: the training command, as an argument list.
    :param env: extra environment variables for the training (the contract is added).
    :param cwd: working directory of the training.
    :param preemptions: a schedule from :func:`fixed_preemptions`, :func:`step_preemptions`,
        :func:`random_preemptions` or :func:`trace_preemptions`; ``None`` never preempts.
    :param notice_seconds: seconds between the notice (SIGTERM) and the hard kill
        (AWS gives 120, GCP 30; short values keep demos quick); ``0``: a hard kill with
        no notice. A schedule's own ``notice_seconds`` list overrides it per attempt.
    :param state_dir: where attempt directories live (default: ``[spot_training]
        local_state_dir``, else ``$AIRFLOW_HOME/spot_training``).
    :param spot_price_per_hour: price used for cost estimates of spot attempts.
    :param on_demand_price_per_hour: price used for on-demand attempts and savings.
    :param checkpoint_sync: run the training under the synced checkpoint folder
        (:mod:`airflow_spot_training.runtime.folder_sync`): ``True`` for the defaults, a dict
        of :class:`~airflow_spot_training.core.folder_sync.FolderSync` settings, or an instance.
        The folder is ``<attempt directory>/checkpoint`` unless ``local_dir`` is set.
    """

    kind = "local"
    default_restart_overhead = 3.0

    def __init__(
        self,
        command: list[str] | None = None,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        preemptions: dict[str, Any] | None = None,
        notice_seconds: float = 5.0,
        state_dir: str | None = None,
        spot_price_per_hour: float | None = None,
        on_demand_price_per_hour: float | None = None,
        checkpoint_sync: FolderSync | dict[str, Any] | bool | None = None,
    ) -> None:
        self.command = list(command) if isinstance(command, (list, tuple)) else command
        self.env = dict(env or {})
        self.cwd = cwd
        self.preemptions = preemptions
        self.notice_seconds = notice_seconds
        self.state_dir = state_dir
        self.spot_price_per_hour = spot_price_per_hour
        self.on_demand_price_per_hour = on_demand_price_per_hour
        try:
            self.checkpoint_sync = FolderSync.from_value(checkpoint_sync)
        except FolderSyncConfigError as e:
            raise BackendConfigError(str(e)) from e
        self.validate()

    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "env": self.env,
            "cwd": self.cwd,
            "preemptions": self.preemptions,
            "notice_seconds": self.notice_seconds,
            "state_dir": self.state_dir,
            "spot_price_per_hour": self.spot_price_per_hour,
            "on_demand_price_per_hour": self.on_demand_price_per_hour,
            "checkpoint_sync": self.checkpoint_sync.to_dict() if self.checkpoint_sync else None,
        }

    def validate(self) -> None:
        if not isinstance(self.command, list) or not self.command or not all(isinstance(a, str) for a in self.command):
            raise BackendConfigError(
                "LocalBackend needs command=[...]: the training command as a list of strings, "
                "e.g. [sys.executable, '-m', 'airflow_spot_training.examples.regression']."
            )
        if not isinstance(self.notice_seconds, (int, float)) or self.notice_seconds < 0:
            raise BackendConfigError(f"notice_seconds must be 0 or more, got {self.notice_seconds!r}")
        _validate_schedule(self.preemptions)

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
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "w") as f:
                f.write(repr(time.time()))
        except FileExistsError:
            pass
        return float(marker.read_text() or time.time())

    def _preempt_at(self, request: LaunchRequest, run_dir: Path, now: float) -> float | None:
        s = self.preemptions
        if request.capacity is not Capacity.SPOT or not s:
            return None
        if s["kind"] == "fixed":
            after = s["after_seconds"]
            idx = request.attempt - 1
            if idx < len(after) and after[idx] is not None:
                return now + float(after[idx])
            return None
        if s["kind"] == "steps":
            return None  # see _preempt_at_step: the supervisor watches the commit records
        if s["kind"] == "rate":
            if s["per_hour"] <= 0:
                return None
            rng = random.Random(f"{s.get('seed', 0)}:{request.contract.run_key}:{request.attempt}")
            return now + rng.expovariate(s["per_hour"] / 3600.0)
        data = _load_trace(s["path"])
        sps = float(s.get("seconds_per_sample", 1.0))
        epoch = self._run_epoch(run_dir)
        i0 = int(s.get("offset", 0)) + int(math.floor(max(0.0, now - epoch) / sps))
        if data[i0 % len(data)] == 0:
            raise SpotCapacityUnavailable(f"trace {Path(s['path']).name} has no spot capacity at sample {i0}")
        for k in range(1, len(data) + 1):
            if data[(i0 + k) % len(data)] == 0:
                return epoch + (i0 + k - int(s.get("offset", 0))) * sps
        return None

    def _notice_seconds(self, request: LaunchRequest) -> float:
        notices = (self.preemptions or {}).get("notice_seconds") or []
        idx = request.attempt - 1
        return float(notices[idx]) if idx < len(notices) and notices[idx] is not None else float(self.notice_seconds)

    def _preempt_at_step(self, request: LaunchRequest) -> int | None:
        s = self.preemptions
        if request.capacity is not Capacity.SPOT or not s or s["kind"] != "steps":
            return None
        at = s["at_steps"]
        idx = request.attempt - 1
        return at[idx] if idx < len(at) else None

    # -- worker side ----------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        attempt_dir = self._attempt_dir(request)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        with open(attempt_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            launch_file = attempt_dir / LAUNCH_FILE
            if launch_file.exists():
                handle = json.loads(launch_file.read_text())
                if handle.get("token") == request.token:
                    return handle  # already launched under this token: re-attach
                raise BackendConfigError(
                    f"attempt directory {attempt_dir} belongs to token {handle.get('token')!r}, "
                    f"not {request.token!r}; is state_dir shared between two deployments?"
                )
            now = time.time()
            preempt_at = self._preempt_at(request, attempt_dir.parent, now)
            env = {**os.environ, **self.env, **request.contract.to_env()}
            spec = {
                "preempt_at_step": self._preempt_at_step(request),
                "command": self.command if self.checkpoint_sync is None else self.checkpoint_sync.wrap(
                    self.command, python=sys.executable, default_dir=str(attempt_dir / LOCAL_CHECKPOINT_DIR_NAME)),
                "capacity": request.capacity.value,
                "env": env,
                "cwd": self.cwd,
                "preempt_at": preempt_at,
                "notice_seconds": self._notice_seconds(request),
            }
            (attempt_dir / "spec.json").write_text(json.dumps(spec))
            with open(attempt_dir / "supervisor.log", "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "airflow_spot_training.backends.local_supervisor", str(attempt_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives the worker, own process group
                    close_fds=True,
                )
            # reap it if this process outlives it (e.g. `airflow dags test`), so no zombie is left
            threading.Thread(target=proc.wait, daemon=True).start()
            handle = {
                "backend": self.kind,
                "attempt_dir": str(attempt_dir),
                "token": request.token,
                "attempt": request.attempt,
                "capacity": request.capacity.value,
                "supervisor_pid": proc.pid,
                "launched_at": now,
                "preempt_at": preempt_at,
                "pool": "local",
            }
            tmp = attempt_dir / f".{LAUNCH_FILE}.tmp"
            tmp.write_text(json.dumps(handle))
            os.replace(tmp, launch_file)
            return handle

    def find(self, request: LaunchRequest) -> dict[str, Any] | None:
        launch_file = self._attempt_dir(request) / LAUNCH_FILE
        if launch_file.exists():
            handle = json.loads(launch_file.read_text())
            if handle.get("token") == request.token:
                return handle
        return None

    def describe(self, handle: dict[str, Any]) -> AttemptStatus:
        attempt_dir = Path(handle["attempt_dir"])
        status = _read_json(attempt_dir / STATUS_FILE)
        if status and status.get("state") in FINAL_STATES:
            return AttemptStatus.from_dict(status)
        if not _alive(handle["supervisor_pid"]):
            # it may have written its final status between our read and the liveness check
            status = _read_json(attempt_dir / STATUS_FILE)
            if status and status.get("state") in FINAL_STATES:
                return AttemptStatus.from_dict(status)
            return AttemptStatus(
                state=FAILED,
                reason="the local supervisor process vanished (machine restart or kill -9)",
                ended_at=time.time(),
            )
        if status:
            return AttemptStatus.from_dict(status)
        return AttemptStatus(state=RUNNING, reason="starting", started_at=handle.get("launched_at"))

    def stop(self, handle: dict[str, Any]) -> None:
        pid = int(handle["supervisor_pid"])
        attempt_dir = Path(handle["attempt_dir"])
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
        if not status or status.get("state") not in FINAL_STATES:
            _write_json(attempt_dir / STATUS_FILE, {**(status or {}), "state": STOPPED,
                                                    "reason": "stopped on request", "ended_at": time.time()})

    def price_per_hour(self, handle: dict[str, Any], capacity: Capacity) -> float | None:
        return self.spot_price_per_hour if capacity is Capacity.SPOT else self.on_demand_price_per_hour

    def spot_available(self, handle: dict[str, Any]) -> bool | None:
        """From the replayed trace's current sample for this run; always, without a trace."""
        s = self.preemptions
        if not s or s["kind"] != "trace":
            return True
        data = _load_trace(s["path"])
        epoch = self._run_epoch(Path(handle["attempt_dir"]).parent)
        elapsed = max(0.0, time.time() - epoch)
        i = int(s.get("offset", 0)) + int(math.floor(elapsed / float(s.get("seconds_per_sample", 1.0))))
        return bool(data[i % len(data)])

    def log_path(self, handle: dict[str, Any]) -> str:
        return str(Path(handle["attempt_dir"]) / LOG_FILE)


def request_preemption(attempt_dir: str | os.PathLike[str]) -> bool:
    """Make a running spot attempt be reclaimed now (notice, then hard kill).

    Returns ``False`` (and changes nothing) when the attempt is on-demand or has ended.
    """
    from airflow_spot_training.backends.local_supervisor import PREEMPT_NOW_FILE

    attempt_dir = Path(attempt_dir)
    spec = _read_json(attempt_dir / "spec.json") or {}
    capacity = spec.get("capacity") or (spec.get("env") or {}).get("SPOT_TRAINING_CAPACITY")
    status = _read_json(attempt_dir / STATUS_FILE) or {}
    if capacity != Capacity.SPOT.value or status.get("state") in FINAL_STATES:
        return False
    launch = _read_json(attempt_dir / LAUNCH_FILE)
    if launch is None or not _alive(int(launch["supervisor_pid"])):
        return False
    (attempt_dir / PREEMPT_NOW_FILE).touch()
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
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
