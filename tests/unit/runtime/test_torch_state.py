"""Exact resume of the demo training through preemptions, and refusal of incompatible checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from airflow_spot_training.core.contract import Contract
from airflow_spot_training.examples import regression
from airflow_spot_training.runtime.checkpoint import CheckpointError, CheckpointManager

ARGS = ["--steps", "120", "--checkpoint-every", "15", "--hidden", "32"]


def _train_in_process(ckpt: Path, out: Path, extra: list[str] | None = None) -> int:
    args = regression.parse_args(ARGS + ["--save-final-params", str(out)] + (extra or []))
    contract = Contract(checkpoint_uri=str(ckpt), attempt=1, capacity="spot", preemptions=0, run_key="t")
    return regression.train(args, contract)


def _wait_for_step(ckpt: Path, at_least: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    manager = CheckpointManager(str(ckpt), keep_last=None)
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        latest = manager.latest()
        if latest is not None and latest.step >= at_least:
            return
        time.sleep(0.05)


class TestExactResume:
    def test_preempted_run_ends_with_the_same_parameters(self, tmp_path):
        straight = tmp_path / "straight.pt"
        assert _train_in_process(tmp_path / "ck-straight", straight) == 0

        ckpt, out = tmp_path / "ck-preempted", tmp_path / "preempted.pt"
        cmd = [sys.executable, "-m", "airflow_spot_training.examples.regression", *ARGS,
               "--checkpoint-uri", str(ckpt), "--save-final-params", str(out), "--step-delay", "0.01"]
        # 1: a notice (SIGTERM): the training writes an emergency checkpoint and exits
        p = subprocess.Popen(cmd)
        _wait_for_step(ckpt, 15, p)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == regression.EXIT_INTERRUPTED
        after_notice = CheckpointManager(str(ckpt)).latest()
        assert after_notice.record.reason == "interruption"
        # 2: no notice (SIGKILL): work since the last periodic checkpoint is lost and recomputed
        p = subprocess.Popen(cmd)
        _wait_for_step(ckpt, after_notice.step + 20, p)
        p.kill()
        p.wait(60)
        # 3: runs to the end
        assert subprocess.run(cmd, timeout=120).returncode == 0

        a, b = torch.load(straight), torch.load(out)
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)
        assert not torch.equal(a["0.weight"], torch.zeros_like(a["0.weight"]))

    def test_incompatible_checkpoint_is_refused_with_what_changed(self, tmp_path):
        ckpt = tmp_path / "ck"
        assert _train_in_process(ckpt, tmp_path / "a.pt") == 0
        args = regression.parse_args(ARGS + ["--lr", "0.5"])
        contract = Contract(checkpoint_uri=str(ckpt), attempt=2, capacity="spot", preemptions=0, run_key="t")
        with pytest.raises(CheckpointError) as err:
            regression.train(args, contract)
        message = str(err.value)
        assert "refusing to resume from the checkpoint at step 120" in message
        assert "lr: 0.01 -> 0.5" in message
        assert "new checkpoint_prefix" in message


class TestAsyncSave:
    def _checkpointer(self, root: Path):
        from airflow_spot_training.runtime.torch_state import TorchCheckpointer

        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        return model, optimizer, TorchCheckpointer(CheckpointManager(str(root), keep_last=2), model=model,
                                                   optimizer=optimizer, config={"c": 1})

    def test_the_snapshot_is_the_state_at_the_call_not_at_the_write(self, tmp_path):
        model, optimizer, ckpt = self._checkpointer(tmp_path)
        at_save = {k: v.clone() for k, v in model.state_dict().items()}
        future = ckpt.save_async(1, data_position={"batch": 3})
        with torch.no_grad():
            model.weight.add_(100.0)  # training goes on while the write runs
        assert future.result().step == 1
        assert ckpt.wait().step == 1 and ckpt.wait() is None  # reported once
        _, _, fresh = self._checkpointer(tmp_path)
        resumed = fresh.restore()
        assert resumed.step == 1 and resumed.data_position == {"batch": 3}
        for name, value in at_save.items():
            assert torch.equal(fresh.model.state_dict()[name], value)

    def test_saves_commit_in_order_and_a_sync_save_waits(self, tmp_path):
        _, _, ckpt = self._checkpointer(tmp_path)
        ckpt.save_async(1)
        ckpt.save_async(2)  # waits for 1 first
        ckpt.save(3, reason="interruption")  # waits for 2, then writes 3 itself
        assert [c.step for c in CheckpointManager(str(tmp_path)).committed()] == [2, 3]
        assert CheckpointManager(str(tmp_path)).latest().record.reason == "interruption"

    def test_a_failed_background_write_is_raised_by_the_next_wait(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("x")
        _, _, ckpt = self._checkpointer(blocker / "ck")  # a prefix under a file cannot be written
        ckpt.save_async(1)
        with pytest.raises((CheckpointError, OSError), match="Not a directory|could not write"):
            ckpt.wait()
        assert ckpt.wait() is None
