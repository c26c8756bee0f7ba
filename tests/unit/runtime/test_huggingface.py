"""The Hugging Face adapter with a real Trainer: notice -> save at the step boundary -> exact resume."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback

from airflow_spot_training.examples import hf_tiny
from airflow_spot_training.runtime.checkpoint_folder import adapter_announced, read_marker
from airflow_spot_training.runtime.huggingface import SpotTrainerCallback, newest_finished_checkpoint
from airflow_spot_training.runtime.interruption import InterruptionWatcher

os.environ["HF_HUB_OFFLINE"] = "1"
STEPS = 12


class NoticeAt(TrainerCallback):
    def __init__(self, watcher: InterruptionWatcher, step: int) -> None:
        self.watcher, self.step = watcher, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.watcher.notify("test")


def _run(folder, notice_at: int | None = None):
    args = hf_tiny.parse_args(["--steps", str(STEPS), "--save-steps", "5", "--checkpoint-dir", str(folder)])
    watcher = InterruptionWatcher(handle_sigterm=False)
    spot = SpotTrainerCallback(str(folder), watcher=watcher)
    trainer = hf_tiny.build_trainer(args, spot)
    if notice_at:
        trainer.add_callback(NoticeAt(watcher, notice_at))
    code = spot.train(trainer)
    return code, spot, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_notice_saves_at_the_step_boundary_and_resume_is_exact(tmp_path):
    code, _, straight = _run(tmp_path / "straight")
    assert code == 0
    folder = tmp_path / "interrupted"
    code, spot, _ = _run(folder, notice_at=7)
    assert code == 143 and spot.interrupted
    assert adapter_announced(str(folder))
    # the notice came after step 7's hooks (our callback's included): saved at the next boundary, step 8
    path, step = newest_finished_checkpoint(str(folder))
    assert (os.path.basename(path), step) == ("checkpoint-8", 8)
    assert read_marker(str(folder), "checkpoint-8")["reason"] == "interruption"

    code, resumed, params = _run(folder)
    assert code == 0 and resumed.resumed_step == 8 and resumed.resume_from.endswith("checkpoint-8")
    for name, value in straight.items():
        assert torch.allclose(params[name], value, atol=1e-6), name


def test_an_unmarked_checkpoint_is_not_resumed_from(tmp_path):
    (tmp_path / "checkpoint-99").mkdir()  # a save that never finished
    (tmp_path / "checkpoint-99" / "trainer_state.json").write_text("{")
    spot = SpotTrainerCallback(str(tmp_path), watcher=InterruptionWatcher(handle_sigterm=False))
    assert spot.resume_from is None and spot.resumed_step == 0


def test_output_dir_must_be_the_synced_folder(tmp_path):
    args = hf_tiny.parse_args(["--steps", "2", "--checkpoint-dir", str(tmp_path / "a")])
    spot = SpotTrainerCallback(str(tmp_path / "b"), watcher=InterruptionWatcher(handle_sigterm=False))
    trainer = hf_tiny.build_trainer(args, spot)
    trainer.args.output_dir = str(tmp_path / "a")
    with pytest.raises(ValueError, match="is not the synced checkpoint folder"):
        spot.train(trainer)
