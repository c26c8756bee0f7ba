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
* A gang (``node_env`` has one entry per node): every node runs as a child. A reclaim
  takes one node (the one named in ``preempt-now``, else node (attempt - 1) mod N): it
  gets the notice and the hard kill as above; once it is gone, the survivors get the
  notice (SIGTERM: the backend stops the rest of the gang) and are killed after
  ``stop_seconds``: one preemption of the attempt. A training that makes its ranks agree
  on the notice (``runtime.gang.gang_stop_requested``) has every rank write its shard
  before the reclaimed node goes. A node failing on its own stops the rest the same way: ``failed``.
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


def open_private(path: Path, mode: str = "wb") -> Any:
    from airflow_spot_training.backends.local import open_private as opener

    return opener(path, mode)


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


class _Gang:
    """The training processes of one attempt: one per node (a single node is a gang of one).

    Node ``r`` runs with the spec's ``env`` plus ``node_env[r]`` (its rank and rank 0's
    address); rank 0 writes ``training.log``, rank ``r`` > 0 ``training-node-r.log``.
    """

    def __init__(self, attempt_dir: Path, spec: dict[str, Any]) -> None:
        node_envs = spec.get("node_env") or [{}]
        self.children: list[subprocess.Popen[bytes]] = []
        for rank, node_env in enumerate(node_envs):
            with open_private(attempt_dir / node_log_name(rank), "ab") as log:
                self.children.append(subprocess.Popen(
                    spec["command"], env={**os.environ, **spec["env"], **node_env}, cwd=spec.get("cwd") or None,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                ))

    def codes(self) -> list[int | None]:
        return [child.poll() for child in self.children]

    def signal(self, signum: int, ranks: list[int] | None = None) -> None:
        for rank, child in enumerate(self.children):
            if (ranks is None or rank in ranks) and child.poll() is None:
                child.send_signal(signum)

    def kill(self, ranks: list[int] | None = None) -> None:
        self.signal(signal.SIGKILL, ranks)
        for rank, child in enumerate(self.children):
            if ranks is None or rank in ranks:
                child.wait()

    def broken(self) -> int | None:
        """The exit code of a node that failed on its own (the gang cannot go on without it), if any."""
        return next((code for code in self.codes() if code not in (None, 0)), None)

    def done(self) -> bool:
        return all(code is not None for code in self.codes())


def node_log_name(rank: int) -> str:
    return "training.log" if rank == 0 else f"training-node-{rank}.log"


def _reclaimed_node(preempt_now: Path | None, attempt: int, nodes: int) -> int:
    """Which node a reclaim takes: the one named in ``preempt-now``, else node (attempt - 1) mod N."""
    try:
        text = preempt_now.read_text().strip() if preempt_now is not None else ""
    except FileNotFoundError:
        text = ""
    return int(text) % nodes if text.isdigit() else (attempt - 1) % nodes


class _Watch:
    """One attempt's supervision: the reclaim schedule, the notice, the stop request, the final state."""

    def __init__(self, attempt_dir: Path, spec: dict[str, Any]) -> None:
        self.attempt_dir, self.spec = attempt_dir, spec
        self.preempt_at = spec.get("preempt_at")
        self.preempt_at_step = spec.get("preempt_at_step")
        self.progress = _progress_reader(spec) if self.preempt_at_step is not None else None
        capacity = spec.get("capacity") or spec.get("env", {}).get("SPOT_TRAINING_CAPACITY")
        self.preempt_now = attempt_dir / PREEMPT_NOW_FILE if capacity == "spot" else None
        self.notice = float(spec.get("notice_seconds", 5.0))
        #: seconds the rest of a gang gets to write its shard after one node vanished with no notice
        self.stop_seconds = float(spec.get("stop_seconds", self.notice))
        self.next_progress_check = 0.0
        self.kind: str | None = None  # "preempted", "stopped" or "failed" once the gang is told to stop
        self.kill_at: dict[tuple[int, ...], float] = {}  # nodes -> when they are killed
        self.failed_code: int | None = None
        self.lost: int | None = None  # the node a reclaim took
        self.survivors_told = False

    def reclaimed(self, now: float) -> bool:
        """Whether the simulated cloud reclaims this spot attempt now."""
        if self.preempt_at is not None and now >= self.preempt_at:
            return True
        if self.preempt_now is not None and self.preempt_now.exists():
            return True
        if self.progress is not None and now >= self.next_progress_check:
            self.next_progress_check = now + 0.2
            return (self.progress() or -1) >= self.preempt_at_step
        return False

    def start_stopping(self, gang: _Gang, status: dict[str, Any], now: float, stop_requested: bool) -> None:
        """Decide whether the gang must stop now (stop request, reclaim, a node failing), and tell it."""
        if stop_requested:
            self.kind = STOPPED
            self._notice(gang, None, now, self.notice)
        elif self.reclaimed(now):
            self.kind = PREEMPTED
            status.update(details={"notice_at": now})
            _write_status(self.attempt_dir, status)
            self.lost = _reclaimed_node(self.preempt_now, int(self.spec.get("attempt") or 1), len(gang.children))
            self._notice(gang, [self.lost], now, self.notice)  # that machine's notice, or its end at once
        elif len(gang.children) > 1 and gang.broken() is not None:
            self.kind, self.failed_code = FAILED, gang.broken()
            self._notice(gang, None, now, self.stop_seconds)  # the others cannot go on without it

    def carry_on(self, gang: _Gang, now: float) -> None:
        """After the notice: hard kills when they are due; once the reclaimed node is gone, stop the rest."""
        if self.lost is not None and not self.survivors_told and gang.codes()[self.lost] is not None:
            self.survivors_told = True
            survivors = [rank for rank in range(len(gang.children)) if rank != self.lost]
            self._notice(gang, survivors, now, self.stop_seconds)  # the backend stops the rest of the gang
        for ranks, due in list(self.kill_at.items()):
            if now >= due:
                gang.kill(list(ranks))  # the machines are gone
                del self.kill_at[ranks]

    def _notice(self, gang: _Gang, ranks: list[int] | None, now: float, seconds: float) -> None:
        ranks = list(range(len(gang.children))) if ranks is None else ranks
        if not ranks:
            return
        if seconds > 0:
            gang.signal(signal.SIGTERM, ranks)
            self.kill_at[tuple(ranks)] = now + seconds
        else:
            gang.kill(ranks)

    def final(self, codes: list[int | None]) -> dict[str, Any]:
        rc = next((code for code in codes if code not in (None, 0)), 0)
        if self.kind == PREEMPTED and rc != 0:
            return {"state": PREEMPTED, "reason": "spot capacity reclaimed (simulated: notice, then hard kill)",
                    "preemptions": 1}
        if self.kind == STOPPED:
            return {"state": STOPPED, "reason": "stopped on request"}
        if rc == 0:
            return {"state": SUCCEEDED, "reason": "training exited 0"}
        failed = self.failed_code if self.failed_code is not None else rc
        rank = codes.index(failed) if failed in codes else 0
        where = f"node {rank} of {len(codes)}: " if len(codes) > 1 else ""
        log_path = self.attempt_dir / node_log_name(rank)
        return {"state": FAILED, "reason": f"{where}training exited with code {failed}: {_tail(log_path)}"}


def main(attempt_dir_arg: str) -> int:
    attempt_dir = Path(attempt_dir_arg)
    spec = json.loads((attempt_dir / "spec.json").read_text())
    stop_requested = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.time()
    gang = _Gang(attempt_dir, spec)
    status: dict[str, Any] = {
        "state": RUNNING, "reason": "", "started_at": started, "supervisor_pid": os.getpid(),
        "pid": gang.children[0].pid, "pids": [child.pid for child in gang.children],
        "preempt_at": spec.get("preempt_at"), "details": {},
    }
    _write_status(attempt_dir, status)
    watch = _Watch(attempt_dir, spec)
    while not gang.done():
        now = time.time()
        if watch.kind is None:
            watch.start_stopping(gang, status, now, stop_requested)
        else:
            watch.carry_on(gang, now)
        time.sleep(0.05)
    codes = gang.codes()
    details = dict(status.get("details") or {})
    details["exit_code"] = next((code for code in codes if code not in (None, 0)), 0)
    if len(codes) > 1:
        details["exit_codes"] = codes
    status.update(watch.final(codes), ended_at=time.time(), details=details)
    _write_status(attempt_dir, status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
