"""The local checkpoint folder: entries, finished markers, steps, settling."""

from __future__ import annotations

import pytest

from airflow_spot_training.runtime.checkpoint_folder import (
    SAGEMAKER_LOCAL_PATH,
    SettleTracker,
    adapter_announced,
    announce_adapter,
    checkpoint_dir,
    list_entries,
    mark_finished,
    read_marker,
    remove_entry,
    step_from_name,
)


@pytest.mark.parametrize("name, step", [
    ("checkpoint-500", 500), ("epoch=1-step=80.ckpt", 80), ("state-00000012.json", 12), ("model.pt", None),
])
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def test_entries_leave_out_hidden_temporary_and_empty(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "model.bin").write_bytes(b"m")
    (tmp_path / "checkpoint-5" / "sub").mkdir()
    (tmp_path / "checkpoint-5" / "sub" / "x.json").write_text("{}")
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "state.json").write_text("{}")
    (tmp_path / "state.json.tmp").write_text("{")
    mark_finished(str(tmp_path), "checkpoint-5", step=5)
    entries = {e.name: e for e in list_entries(str(tmp_path))}
    assert sorted(entries) == ["checkpoint-5", "state.json"]
    assert sorted(entries["checkpoint-5"].files()) == ["checkpoint-5/model.bin", "checkpoint-5/sub/x.json"]
    assert entries["state.json"].files() == {"state.json": str(tmp_path / "state.json")}


def test_marker_round_trip_and_removal(tmp_path):
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "a").write_text("a")
    assert read_marker(str(tmp_path), "checkpoint-7") is None
    mark_finished(str(tmp_path), "checkpoint-7", step=7, total_steps=10, reason="interruption")
    marker = read_marker(str(tmp_path), "checkpoint-7")
    assert (marker["step"], marker["total_steps"], marker["reason"]) == (7, 10, "interruption")
    remove_entry(str(tmp_path), "checkpoint-7")
    assert read_marker(str(tmp_path), "checkpoint-7") is None and not (tmp_path / "checkpoint-7").exists()
    with pytest.raises(ValueError, match="not a top-level checkpoint name"):
        mark_finished(str(tmp_path), "a/b", step=1)


def test_adapter_announcement(tmp_path):
    assert not adapter_announced(str(tmp_path))
    announce_adapter(str(tmp_path), "huggingface")
    assert adapter_announced(str(tmp_path))


def test_settle_tracker_uses_its_own_clock(tmp_path):
    (tmp_path / "state.json").write_text("1")
    tracker = SettleTracker(5.0)
    [entry] = list_entries(str(tmp_path))
    assert not tracker.settled(entry, now=100.0)
    assert not tracker.settled(entry, now=104.9)
    assert tracker.settled(entry, now=105.0)
    (tmp_path / "state.json").write_text("22")  # a new version starts the interval again
    [changed] = list_entries(str(tmp_path))
    assert not tracker.settled(changed, now=106.0)
    assert tracker.settled(changed, now=111.0)


def test_checkpoint_dir_resolution(tmp_path):
    assert checkpoint_dir("/explicit", environ={}) == "/explicit"
    assert checkpoint_dir(None, environ={"SPOT_TRAINING_CHECKPOINT_DIR": "/mnt/ck"}) == "/mnt/ck"
    import os

    if not os.path.isdir(SAGEMAKER_LOCAL_PATH):
        with pytest.raises(RuntimeError, match="SPOT_TRAINING_CHECKPOINT_DIR is not set"):
            checkpoint_dir(None, environ={})
