"""The machines of a fake cloud: real processes running the training, and what they logged.

Every training process the suite starts (a bootstrap script, a container command) is a
:class:`MachineProcess` in its own process group, logging to its own file. The logs are
the ground truth of the suite: the guide's training prints ``step N loss L`` once per
step it completed, so the steps a run computed twice are the steps printed twice.

A :class:`ReclaimPlan` says when the cloud takes a spot machine back: once the
attempt's log matches a pattern (a step reached, the export started), or when its
bootstrap shuts the machine down. Reclaims are tied to what the training did, never to
the clock, so a busy machine tells the same story as an idle one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP_LINE = re.compile(r"^step (\d+) ", re.M)
#: upper bound of a notice window: a training that handles the notice exits long before
NOTICE_WINDOW = 30.0
#: how often machine threads look at their processes and plans
TICK = 0.02


@dataclass
class ReclaimPlan:
    """When the cloud reclaims the spot machine of one attempt.

    :param attempt: the attempt number.
    :param when: a regular expression; the reclaim starts once the training's log matches it.
    :param notice: ``True``: the cloud's notice, then a hard kill after the notice window if the
        training is still there; ``False``: the machine is frozen (SIGSTOP) and killed at once.
    :param at_shutdown: reclaim when the bootstrap shuts the machine down (after its result record).
    """

    attempt: int
    when: str | None = None
    notice: bool = True
    at_shutdown: bool = False
    done: bool = False


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def last_logged_step(log: str) -> int | None:
    steps = STEP_LINE.findall(log)
    return int(steps[-1]) if steps else None


def read_reported_step(progress_uri: str | None, storage_options: dict[str, Any]) -> int | None:
    """The step in a training's progress record (what the operator reads), if there is one."""
    if not progress_uri:
        return None
    import json

    import fsspec

    fs, path = fsspec.core.url_to_fs(progress_uri, **storage_options)
    try:
        return int(json.loads(fs.cat_file(path))["step"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def freeze_consistently(pause: Any, resume: Any, log: Any, reported: Any, tries: int = 1000) -> None:
    """Freeze a training where the last step it logged is also the last it reported.

    A hard kill can land between a training printing ``step N`` and writing its progress
    record; the ground truth (its log) and the ledger (its progress record) would then
    disagree by one step for a reason that is no one's defect. So: freeze, compare, and if
    they differ let it run a moment and freeze again (a matter of microseconds).
    """
    for _ in range(tries):
        pause()
        if last_logged_step(log()) == reported():
            return
        resume()
        time.sleep(0.002)
    raise AssertionError("the training's log and its progress record never agreed while frozen")


@dataclass
class MachineProcess:
    """One process group that runs a training on one machine.

    :param progress_uri: where the training writes its progress record (compared with its
        log when a hard kill freezes it).
    """

    label: str
    attempt: int
    capacity: str
    log_path: Path
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    progress_uri: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: what the machine printed on its console (stdout and stderr of the process)
    console_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        if self.popen.poll() is None:
            return True
        if self.ended_at is None:
            self.ended_at = time.time()
        return False

    def log(self) -> str:
        return _read(self.log_path)

    def console(self) -> str:
        return _read(self.console_path or self.log_path)

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def freeze_and_kill(self) -> None:
        """A hard kill that lands at a known state: freeze the group where its log and its
        progress record agree (:func:`freeze_consistently`), then kill it."""
        freeze_consistently(lambda: self.signal_group(signal.SIGSTOP), lambda: self.signal_group(signal.SIGCONT),
                            self.log, lambda: read_reported_step(self.progress_uri, self.storage_options))
        self.signal_group(signal.SIGKILL)
        self.wait()

    def end(self, grace: float = NOTICE_WINDOW) -> None:
        """What a machine going down does to its processes: SIGTERM, then SIGKILL after ``grace``."""
        self.signal_group(signal.SIGTERM)
        if not self.wait(grace):
            self.signal_group(signal.SIGKILL)
            self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self.alive()
        return True


class Fleet:
    """Every machine process of one test, the reclaim plans, and the ground truth.

    :param root: where the processes' logs and working directories go.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.processes: list[MachineProcess] = []
        self.plans: list[ReclaimPlan] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        #: set when the test ends: machine threads stop looking after their machines
        self.closed = threading.Event()
        #: exceptions raised in machine threads (a harness bug must not pass silently)
        self.errors: list[BaseException] = []
        #: one absolute path for every machine's local disk folder: a symlink the fleet points at
        #: the newest machine's own empty folder, so a relaunch never finds its predecessor's files
        self.local_disk = root / "local-disk"

    # -- processes ---------------------------------------------------------------------
    def start(self, label: str, attempt: int, capacity: str, argv: list[str], env: dict[str, str],
              log_path: Path | None = None, cwd: Path | None = None, progress_uri: str | None = None,
              storage_options: dict[str, Any] | None = None) -> MachineProcess:
        """Start one machine process in its own group; stdout and stderr go to ``<label>.console``."""
        with self.lock:
            index = len(self.processes)
        workdir = cwd or self.root / f"{label}-{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        self._point_local_disk_at(workdir / "local-disk")
        console = self.root / f"{label}-{index}.console"
        with open(console, "ab") as out:
            popen = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        process = MachineProcess(label, attempt, capacity, log_path or console, popen, progress_uri=progress_uri,
                                 storage_options=dict(storage_options or {}), console_path=console)
        with self.lock:
            self.processes.append(process)
        return process

    def _point_local_disk_at(self, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        link = self.root / f".local-disk-{os.getpid()}-{threading.get_ident()}"
        link.symlink_to(folder)
        os.replace(link, self.local_disk)

    def spawn(self, target: Any, *args: Any) -> None:
        """Run a machine's controller in a daemon thread; its exceptions are kept in :attr:`errors`."""
        def run() -> None:
            try:
                target(*args)
            except BaseException as e:  # noqa: BLE001 - reported by the fixture
                if not self.closed.is_set():
                    self.errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def alive(self) -> list[MachineProcess]:
        with self.lock:
            return [p for p in self.processes if p.alive()]

    def kill_all(self) -> None:
        """End the test's machines: stop their controllers, kill what still runs."""
        self.closed.set()
        for process in self.alive():
            process.signal_group(signal.SIGCONT)
            process.signal_group(signal.SIGKILL)
            process.wait(10)
        for thread in self.threads:
            thread.join(5)

    # -- plans -------------------------------------------------------------------------
    def reclaim(self, attempt: int, when: str | None = None, *, notice: bool = True,
                at_shutdown: bool = False) -> ReclaimPlan:
        plan = ReclaimPlan(attempt, when, notice, at_shutdown)
        with self.lock:
            self.plans.append(plan)
        return plan

    def due(self, process: MachineProcess) -> ReclaimPlan | None:
        """The plan that reclaims ``process`` now, if its log says so (each plan fires once)."""
        with self.lock:
            plans = [p for p in self.plans if p.attempt == process.attempt and not p.done and p.when]
        for plan in plans:
            if re.search(plan.when, process.log(), re.M):  # type: ignore[arg-type]
                plan.done = True
                return plan
        return None

    def at_shutdown(self, attempt: int) -> ReclaimPlan | None:
        with self.lock:
            for plan in self.plans:
                if plan.attempt == attempt and plan.at_shutdown and not plan.done:
                    plan.done = True
                    return plan
        return None

    # -- ground truth ------------------------------------------------------------------
    def logs(self) -> list[str]:
        with self.lock:
            return [p.log() for p in self.processes]

    def max_concurrent(self) -> int:
        """The most training processes that ever ran at the same time."""
        with self.lock:
            spans = [(p.started_at, p.ended_at or time.time()) for p in self.processes]
        points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
        running = peak = 0
        for _, delta in points:
            running += delta
            peak = max(peak, running)
        return peak


def executed_steps(logs: list[str]) -> Counter[int]:
    """How often each step was computed, from the trainings' own ``step N`` lines."""
    counts: Counter[int] = Counter()
    for text in logs:
        counts.update(int(m) for m in STEP_LINE.findall(text))
    return counts


def recomputed(logs: list[str]) -> int:
    """Steps computed more than once: the ground truth of ``recomputed_steps``."""
    return sum(n - 1 for n in executed_steps(logs).values() if n > 1)


def wait_until(condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
    """Wait for a state (never asserting on how long it took); fail only if it never comes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(TICK)
