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
