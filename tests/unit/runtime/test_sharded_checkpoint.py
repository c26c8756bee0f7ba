"""Sharded commits of a gang's checkpoints: a step counts only once every rank's shard is there."""

from __future__ import annotations

import json
import os

import pytest

from airflow_spot_training.core.checkpoint_protocol import (
    COMMIT_FILE,
    ShardRecord,
    complete_gang,
    shard_record_name,
    step_dir_name,
)
from airflow_spot_training.runtime.checkpoint import CheckpointError, CheckpointManager


def _gang(root, size=2, token="run-a1", **kw):
    return [CheckpointManager(str(root), rank=rank, num_shards=size, token=token, keep_last=None, **kw)
            for rank in range(size)]


class TestShardedCommit:
    def test_a_step_commits_only_when_every_rank_wrote_its_shard(self, tmp_path):
        rank0, rank1 = _gang(tmp_path)
        first = rank0.save(10, {"state.bin": b"r0"}, total_steps=100)
        assert first.pending_shards == (1,) and not first.committed
        assert not (tmp_path / step_dir_name(10) / COMMIT_FILE).exists()
        assert rank0.latest() is None
        second = rank1.save(10, {"state.bin": b"r1"}, total_steps=100)
        assert second.committed and second.record.num_shards == 2
        assert second.record.files == ["shard-00000/state.bin", "shard-00001/state.bin"]
        for manager, expected in ((rank0, b"r0"), (rank1, b"r1")):
            latest = manager.latest()
            assert latest is not None and latest.step == 10
            with manager.open_file(latest, "state.bin") as f:  # each rank reads its own shard
                assert f.read() == expected

    def test_latest_skips_a_step_missing_one_shard(self, tmp_path):
        rank0, rank1 = _gang(tmp_path)
        for manager in (rank0, rank1):
            manager.save(10, {"state.bin": b"ten"})
        rank0.save(20, {"state.bin": b"twenty"})  # rank 1 was reclaimed before writing step 20
        assert rank0.latest().step == 10
        assert [c.step for c in rank1.committed()] == [10]

    def test_a_commit_record_whose_shard_record_is_gone_is_not_trusted(self, tmp_path):
        rank0, rank1 = _gang(tmp_path)
        for step in (10, 20):
            for manager in (rank0, rank1):
                manager.save(step, {"state.bin": bytes([step])})
        os.remove(tmp_path / step_dir_name(20) / shard_record_name(1, 2))
        assert rank0.latest().step == 10

    def test_a_shard_left_by_an_earlier_attempt_does_not_complete_a_later_one(self, tmp_path):
        old0, _ = _gang(tmp_path, token="run-a1")
        old0.save(20, {"state.bin": b"attempt 1"})  # attempt 1's gang lost rank 1 before step 20
        new0, new1 = _gang(tmp_path, token="run-a2")
        assert not new1.save(20, {"state.bin": b"attempt 2 r1"}).committed  # rank 0's shard is attempt 1's
        assert new0.latest() is None
        assert new0.save(20, {"state.bin": b"attempt 2 r0"}).committed
        with new0.open_file(new0.latest(), "state.bin") as f:
            assert f.read() == b"attempt 2 r0"

    def test_retention_keeps_the_last_committed_steps(self, tmp_path):
        gang = _gang(tmp_path)
        for manager in gang:
            manager.keep_last = 2
        for step in (10, 20, 30):
            for manager in gang:
                manager.save(step, {"state.bin": bytes([step])})
        assert [c.step for c in gang[0].committed()] == [20, 30]

    def test_a_gang_of_another_size_is_refused_with_the_fix(self, tmp_path):
        for manager in _gang(tmp_path, size=2):
            manager.save(10, {"state.bin": b"x"})
        three = CheckpointManager(str(tmp_path), rank=0, num_shards=3)
        with pytest.raises(CheckpointError, match="num_nodes=2"):
            three.open_file(three.latest(), "state.bin")

    def test_contract_variables_give_the_rank_and_the_gang(self, tmp_path, monkeypatch):
        monkeypatch.setenv("SPOT_TRAINING_NODE_RANK", "1")
        monkeypatch.setenv("SPOT_TRAINING_NUM_NODES", "2")
        manager = CheckpointManager(str(tmp_path))
        assert (manager.rank, manager.num_shards, manager.sharded) == (1, 2, True)

    def test_synced_uploads_are_sharded_too(self, tmp_path):
        local = tmp_path / "local"
        local.mkdir()
        (local / "w.bin").write_bytes(b"w")
        gang = _gang(tmp_path / "ck")
        for manager in gang:
            names = manager.put_payload(5, {"checkpoint-5/w.bin": str(local / "w.bin")})
            manager.commit(5, names)
        latest = gang[1].latest()
        assert latest.record.files == ["shard-00000/checkpoint-5/w.bin", "shard-00001/checkpoint-5/w.bin"]
        target = tmp_path / "restored"
        assert gang[1].download(latest, str(target)) == [str(target / "checkpoint-5" / "w.bin")]


class TestSingleNodeUnchanged:
    def test_single_node_records_have_no_shard_fields(self, tmp_path):
        manager = CheckpointManager(str(tmp_path), keep_last=None)
        manager.save(3, {"a.bin": b"a"})
        record = json.loads((tmp_path / step_dir_name(3) / COMMIT_FILE).read_text())
        assert "num_shards" not in record
        with manager.open_file(manager.latest(), "a.bin") as f:
            assert f.read() == b"a"

    def test_records_written_before_gangs_still_load(self, tmp_path):
        step = tmp_path / step_dir_name(7)
        step.mkdir()
        (step / "a.bin").write_bytes(b"old")
        (step / COMMIT_FILE).write_text(json.dumps({"step": 7, "committed_at": 1.0, "files": ["a.bin"],
                                                    "version": 1}))
        assert CheckpointManager(str(tmp_path)).latest().step == 7


class TestCompleteGang:
    @staticmethod
    def _shard(rank, token="t", size=2):
        return ShardRecord(step=1, rank=rank, num_shards=size, committed_at=0.0, token=token)

    def test_needs_every_rank_of_the_same_attempt(self):
        assert complete_gang([self._shard(0)], 2, "t") is None
        assert complete_gang([self._shard(0), self._shard(1, token="u")], 2, "t") is None
        assert complete_gang([self._shard(0), self._shard(1, size=3)], 2, "t") is None
        assert [s.rank for s in complete_gang([self._shard(1), self._shard(0)], 2, "t")] == [0, 1]

    def test_malformed_shard_record_is_refused(self):
        with pytest.raises(ValueError):
            ShardRecord.from_json(json.dumps({"step": 1, "rank": 2, "num_shards": 2, "committed_at": 0}))
