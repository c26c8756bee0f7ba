"""The folder-sync wrapper: restore, finished detection, uploads, the notice, and faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from airflow_spot_training.core.checkpoint_protocol import step_dir_name
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from airflow_spot_training.runtime.checkpoint_folder import announce_adapter, mark_finished
from airflow_spot_training.runtime.folder_sync import (
    BandwidthLimiter,
    FolderUploader,
    exit_code,
    restore_newest,
)

UPLOADER = Path(__file__).with_name("fault_uploader.py")
ROOT = Path(__file__).resolve().parents[3]


def _checkpoint(folder: Path, step: int, marked: bool = True) -> Path:
    entry = folder / f"checkpoint-{step}"
    (entry / "nested").mkdir(parents=True)
    for i in range(3):
        (entry / f"part{i}.bin").write_bytes(bytes([step % 256]) * (1000 + i))
    (entry / "nested" / "state.json").write_text(json.dumps({"step": step}))
    if marked:
        mark_finished(str(folder), entry.name, step=step, total_steps=100)
    return entry


def _contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class TestFolderUploader:
    def test_uploads_the_newest_finished_checkpoint_and_restores_it(self, tmp_path):
        folder, prefix = tmp_path / "dir", tmp_path / "prefix"
        folder.mkdir()
        announce_adapter(str(folder), "test")
        _checkpoint(folder, 5)
        _checkpoint(folder, 10)
        _checkpoint(folder, 15, marked=False)  # still being written: never uploaded in marker mode
        uploader = FolderUploader(CheckpointManager(str(prefix), keep_last=2), str(folder))
        committed = uploader.upload_newest()
        assert committed.step == 10 and committed.record.total_steps == 100
        assert uploader.upload_newest() is None  # superseded 5 is skipped, 10 is on the prefix
        assert [c.step for c in CheckpointManager(str(prefix)).committed()] == [10]

        fresh = tmp_path / "fresh"
        fresh.mkdir()
        restored, names = restore_newest(CheckpointManager(str(prefix)), str(fresh))
        assert restored.step == 10 and names == ["checkpoint-10"]
        assert _contents(fresh / "checkpoint-10") == _contents(folder / "checkpoint-10")
        again = FolderUploader(CheckpointManager(str(prefix)), str(fresh))
        again.note_restored(names)
        assert again.upload_newest() is None  # what was restored is not uploaded back

    def test_plain_files_upload_once_settled_with_steps_from_names_or_a_counter(self, tmp_path):
        folder, prefix = tmp_path / "dir", tmp_path / "prefix"
        folder.mkdir()
        (folder / "state.json").write_text('{"n": 1}')
        uploader = FolderUploader(CheckpointManager(str(prefix), keep_last=None), str(folder), settle_seconds=3600)
        assert uploader.upload_newest() is None  # not settled yet
        assert uploader.upload_newest(exited_ok=True).step == 1  # a clean exit finished every write
        (folder / "state.json").write_text('{"n": 22}')
        assert uploader.upload_newest(exited_ok=True).step == 2  # a new version of the same file
        settled = FolderUploader(CheckpointManager(str(prefix)), str(folder), settle_seconds=0)
        (folder / "state-00000040.json").write_text("{}")
        assert settled.upload_newest().step == 40

    def test_a_checkpoint_that_changes_while_uploaded_is_abandoned(self, tmp_path):
        folder, prefix = tmp_path / "dir", tmp_path / "prefix"
        folder.mkdir()
        entry = _checkpoint(folder, 5)
        uploader = FolderUploader(CheckpointManager(str(prefix)), str(folder))
        [candidate] = uploader.candidates()
        (entry / "part0.bin").write_bytes(b"rewritten")
        assert uploader._upload(candidate) is None
        assert CheckpointManager(str(prefix)).latest() is None
        assert not (prefix / step_dir_name(5)).exists()  # nothing half-uploaded is left behind

    def test_not_newer_than_the_prefix_is_skipped(self, tmp_path):
        folder, prefix = tmp_path / "dir", tmp_path / "prefix"
        folder.mkdir()
        CheckpointManager(str(prefix)).save(50, {"state.pt": b"x"})
        _checkpoint(folder, 20)
        assert FolderUploader(CheckpointManager(str(prefix)), str(folder)).upload_newest() is None
        assert CheckpointManager(str(prefix)).latest().step == 50

    def test_bandwidth_cap_and_lifting_it(self):
        limiter = BandwidthLimiter(1.0)
        limiter.consume(3600)  # the first bytes go at once ...
        assert limiter._free_at - time.monotonic() > 3000  # ... and the next ones would wait an hour
        limiter.lift()
        limiter.consume(10**9)  # returns at once: no cap after the notice

    def test_exit_codes_like_a_shell(self):
        assert (exit_code(0), exit_code(3), exit_code(-15), exit_code(-9)) == (0, 3, 143, 137)


def _wrapper(tmp_path: Path, folder: Path, *command: str, attempt: int = 1) -> subprocess.Popen:
    env = {**os.environ, "SPOT_TRAINING_CHECKPOINT_URI": str(tmp_path / "prefix"), "SPOT_TRAINING_ATTEMPT":
           str(attempt), "SPOT_TRAINING_CAPACITY": "spot", "SPOT_TRAINING_RUN_KEY": "test", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_spot_training.runtime.folder_sync", "--dir", str(folder),
         "--settle-seconds", "0.2", "--poll-seconds", "0.05", "--", *command],
        env=env, stdout=subprocess.PIPE, text=True,
    )


def _read_until(proc: subprocess.Popen, predicate, timeout: float = 120) -> list[dict]:
    seen = []
    end = time.time() + timeout
    for line in proc.stdout:
        if line.startswith("{"):
            seen.append(json.loads(line))
            if predicate(seen[-1]):
                return seen
        assert time.time() < end, f"gave up waiting; saw {seen}"
    raise AssertionError(f"the wrapper ended first; saw {seen}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


PLAIN = [sys.executable, "-m", "airflow_spot_training.examples.plain_folder", "--steps", "12",
         "--write-every", "4", "--step-seconds", "0.01"]


class TestWrapperProcess:
    """The wrapper with a plain script that only writes files (no adapter, no signal handling)."""

    def test_notice_then_resume_from_the_last_finished_write(self, tmp_path):
        proc = _wrapper(tmp_path, tmp_path / "a1", *PLAIN, "--pause-at", "8")
        _read_until(proc, lambda e: e.get("action") == "committed" and e["step"] == 8)
        proc.send_signal(signal.SIGTERM)  # the notice; the script has no handler and dies at once
        rest = [json.loads(line) for line in proc.stdout if line.startswith("{")]
        assert proc.wait(60) == 143
        assert [e["source"] for e in rest if e.get("action") == "notice"] == ["sigterm"]
        assert CheckpointManager(str(tmp_path / "prefix")).latest().step == 8

        second = _wrapper(tmp_path, tmp_path / "a2", *PLAIN, attempt=2)
        events = [json.loads(line) for line in second.stdout if line.startswith("{")]
        assert second.wait(60) == 0
        assert [e["step"] for e in events if e.get("action") == "restored"] == [8]
        assert [e["step"] for e in events if e.get("event") == "start"] == [8]
        done = [e for e in events if e.get("event") == "done"]
        assert done == [{"event": "done", "step": 12, "total": 12 * 11 // 2}]
        assert CheckpointManager(str(tmp_path / "prefix")).latest().step == 12  # the final write, after exit 0

    def test_a_hard_kill_takes_the_training_with_it(self, tmp_path):
        proc = _wrapper(tmp_path, tmp_path / "a1", *PLAIN, "--pause-at", "4")
        _read_until(proc, lambda e: e.get("action") == "committed" and e["step"] == 4)
        child_pids = _children(proc.pid)
        assert child_pids, "the training is not running under the wrapper"
        proc.kill()  # the machine is gone: no notice, no flush
        proc.wait(30)
        end = time.time() + 30
        while any(_alive(p) for p in child_pids) and time.time() < end:
            time.sleep(0.05)
        assert not any(_alive(p) for p in child_pids)
        second = _wrapper(tmp_path, tmp_path / "a2", *PLAIN, attempt=2)
        events = [json.loads(line) for line in second.stdout if line.startswith("{")]
        assert second.wait(60) == 0
        assert [e["step"] for e in events if e.get("event") == "start"] == [4]

    def test_an_exit_code_passes_through(self, tmp_path):
        proc = _wrapper(tmp_path, tmp_path / "a1", sys.executable, "-c", "import sys; sys.exit(3)")
        proc.stdout.read()
        assert proc.wait(60) == 3


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


class TestFaultInjection:
    """Kill the uploader at every filesystem operation of an upload: the cut upload never counts."""

    def test_kill_at_every_stage_of_an_upload(self, tmp_path):
        def prepare(root: Path) -> tuple[Path, Path]:
            prefix, folder = root / "prefix", root / "dir"
            folder.mkdir(parents=True)
            CheckpointManager(str(prefix), keep_last=1).save(1, {"state.bin": b"old"})
            _checkpoint(folder, 2)
            return prefix, folder

        probe_prefix, probe_folder = prepare(tmp_path / "probe")
        dry = subprocess.run([sys.executable, str(UPLOADER), str(probe_prefix), str(probe_folder), "0"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert dry.returncode == 0, dry.stderr
        total_ops = int(dry.stdout.strip().splitlines()[-1])
        assert total_ops >= 12  # 4 payload files (open, write, close), the commit record, retention

        expected = _contents(probe_folder / "checkpoint-2")
        for die_at in range(1, total_ops + 1):
            prefix, folder = prepare(tmp_path / f"run{die_at}")
            result = subprocess.run([sys.executable, str(UPLOADER), str(prefix), str(folder), str(die_at)],
                                    capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert result.returncode == 137, (die_at, result.stderr)
            manager = CheckpointManager(str(prefix), keep_last=1)
            latest = manager.latest()
            assert latest is not None, f"no committed checkpoint after a kill at op {die_at}"
            assert latest.step in (1, 2), die_at
            resumed = tmp_path / f"resumed{die_at}"
            resumed.mkdir()
            restored, names = restore_newest(manager, str(resumed))
            if restored.step == 2:  # whatever is the resume point is whole
                assert _contents(resumed / "checkpoint-2") == expected, die_at
            else:
                assert (resumed / "state.bin").read_bytes() == b"old", die_at
            # the next upload after the crash still works and wins
            assert FolderUploader(manager, str(folder)).upload_newest() is not None or latest.step == 2
            assert manager.latest().step == 2
