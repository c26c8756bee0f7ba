"""The process that stands in for a cloud machine in the local backend.

``python -m airflow_spot_training.backends.local_supervisor ATTEMPT_DIR`` reads
``spec.json``, runs the training command as its child, and keeps
``status.json`` (written atomically) true: running, then exactly one final state.

* The child exits by itself: ``succeeded`` (exit 0) or ``failed`` (with the exit code).
* ``preempt_at`` passes on a spot attempt: SIGTERM to the child (the notice), then
  SIGKILL after ``notice_seconds``: ``preempted`` (unless the child had finished
  with exit 0 before the hard kill: then ``succeeded``). ``notice_seconds`` 0: SIGKILL
  at once, no notice.
* This supervisor gets SIGTERM (a stop request): the child gets SIGTERM, then
  SIGKILL after the notice window: ``stopped``.
* A file named ``preempt-now`` appears in the attempt directory of a spot attempt
  (fault injection, see :func:`airflow_spot_training.backends.local.request_preemption`):
  treated exactly like a reclaim from the schedule, at once. On-demand attempts
  ignore it: clouds do not reclaim on-demand capacity.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from airflow_spot_training.core.attempt import AttemptState

FAILED, PREEMPTED, RUNNING = AttemptState.FAILED.value, AttemptState.PREEMPTED.value, AttemptState.RUNNING.value
STOPPED, SUCCEEDED = AttemptState.STOPPED.value, AttemptState.SUCCEEDED.value

#: fault-injection hook: this file in a spot attempt's directory means "reclaimed now"
PREEMPT_NOW_FILE = "preempt-now"


def _write_status(attempt_dir: Path, status: dict[str, Any]) -> None:
    from airflow_spot_training.backends.local import STATUS_FILE, write_private_json

    write_private_json(attempt_dir / STATUS_FILE, status)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


def _progress_reader(spec: dict[str, Any]) -> Any:
    """A function returning the newest committed step under the attempt's checkpoint prefix."""
    from airflow_spot_training.runtime.checkpoint import CheckpointManager

    manager = CheckpointManager(spec["env"]["SPOT_TRAINING_CHECKPOINT_URI"], keep_last=None)

    def newest() -> int | None:
        try:
            latest = manager.latest()
        except OSError:
            return None
        return latest.step if latest else None

    return newest


def main(attempt_dir_arg: str) -> int:
    attempt_dir = Path(attempt_dir_arg)
    spec = json.loads((attempt_dir / "spec.json").read_text())
    stop_requested = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_sigterm)
    from airflow_spot_training.backends.local import open_private

    log_path = attempt_dir / "training.log"
    started = time.time()
    with open_private(log_path, "ab") as log:
        child = subprocess.Popen(
            spec["command"], env={**os.environ, **spec["env"]}, cwd=spec.get("cwd") or None,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    status: dict[str, Any] = {
        "state": RUNNING, "reason": "", "started_at": started, "supervisor_pid": os.getpid(),
        "pid": child.pid, "preempt_at": spec.get("preempt_at"), "details": {},
    }
    _write_status(attempt_dir, status)

    preempt_at = spec.get("preempt_at")
    preempt_at_step = spec.get("preempt_at_step")
    progress = _progress_reader(spec) if preempt_at_step is not None else None
    capacity = spec.get("capacity") or spec.get("env", {}).get("SPOT_TRAINING_CAPACITY")
    preempt_now = attempt_dir / PREEMPT_NOW_FILE if capacity == "spot" else None
    notice = float(spec.get("notice_seconds", 5.0))
    noticed_at: float | None = None
    kind: str | None = None  # "preempted" or "stopped" once a notice is sent
    next_progress_check = 0.0

    def _reclaimed(now: float) -> bool:
        """Whether the simulated cloud reclaims this spot attempt now."""
        nonlocal next_progress_check
        if preempt_at is not None and now >= preempt_at:
            return True
        if preempt_now is not None and preempt_now.exists():
            return True
        if progress is not None and now >= next_progress_check:
            next_progress_check = now + 0.2
            return (progress() or -1) >= preempt_at_step
        return False

    while True:
        rc = child.poll()
        if rc is not None:
            break
        now = time.time()
        if kind is None:
            if stop_requested:
                kind = STOPPED
            elif _reclaimed(now):
                kind = PREEMPTED
                status.update(details={"notice_at": now})
                _write_status(attempt_dir, status)
            if kind is not None:
                noticed_at = now
                if notice > 0:
                    child.send_signal(signal.SIGTERM)  # the notice
                else:
                    child.kill()  # a reclaim without notice: the machine is gone at once
                    rc = child.wait()
                    break
        elif noticed_at is not None and now >= noticed_at + notice:
            child.kill()  # the machine is gone
            rc = child.wait()
            break
        time.sleep(0.05)

    ended = time.time()
    details = dict(status.get("details") or {})
    details["exit_code"] = rc
    if kind == PREEMPTED and rc != 0:
        final = {"state": PREEMPTED, "reason": "spot capacity reclaimed (simulated: notice, then hard kill)",
                 "preemptions": 1}
    elif kind == STOPPED:
        final = {"state": STOPPED, "reason": "stopped on request"}
    elif rc == 0:
        final = {"state": SUCCEEDED, "reason": "training exited 0"}
    else:
        final = {"state": FAILED, "reason": f"training exited with code {rc}: {_tail(log_path)}"}
    status.update(final, ended_at=ended, details=details)
    _write_status(attempt_dir, status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
