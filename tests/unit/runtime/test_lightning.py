"""The Lightning adapter with real Lightning: notice -> save at the step boundary -> exact resume."""

from __future__ import annotations

import argparse

import pytest
import torch

from airflow_spot_training.examples import lightning_tiny
from airflow_spot_training.runtime.checkpoint_folder import read_marker
from airflow_spot_training.runtime.interruption import InterruptionWatcher
from airflow_spot_training.runtime.lightning import (
    ResumableDataLoader,
    ResumableSampler,
    SpotLightningCallback,
    newest_finished_checkpoint,
    pl,
)

STEPS = 40  # 32 batches per epoch: the runs cross an epoch boundary


class NoticeAt(pl.Callback):
    """Delivers the interruption notice after a given step (what SIGTERM does in production)."""

    def __init__(self, watcher: InterruptionWatcher, step: int) -> None:
        self.watcher, self.step = watcher, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self.watcher.notify("test")


def _run(folder, *, notice_at: int | None = None, every: int = 10) -> tuple[int, SpotLightningCallback, dict]:
    watcher = InterruptionWatcher(handle_sigterm=False)
    spot = SpotLightningCallback(str(folder), every_n_train_steps=every, watcher=watcher)
    pl.seed_everything(0, verbose=False)
    model = lightning_tiny.Regression()
    loader = ResumableDataLoader(lightning_tiny.make_data(0), batch_size=16, seed=0)
    callbacks = ([NoticeAt(watcher, notice_at)] if notice_at else []) + [spot]
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(folder))
    code = spot.fit(trainer, model, train_dataloaders=loader)
    return code, spot, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    code, _, params = _run(tmp_path_factory.mktemp("straight"))
    assert code == 0
    return params


@pytest.mark.parametrize("notice_at, saved_at", [
    (13, 13),  # mid-epoch
    (32, 33),  # on the epoch's last batch: taken one step later, where Lightning resumes exactly
])
def test_notice_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, straight, notice_at, saved_at):
    code, spot, _ = _run(tmp_path, notice_at=notice_at)
    assert code == 143 and spot.interrupted
    found = newest_finished_checkpoint(str(tmp_path))
    assert found is not None and found[1] == saved_at
    assert read_marker(str(tmp_path), f"checkpoint-{saved_at}.ckpt")["reason"] == "interruption"

    code, resumed, params = _run(tmp_path)
    assert code == 0 and resumed.resumed_step == saved_at
    for name, value in straight.items():  # data position, optimizer, scheduler, RNG: all as if never stopped
        assert torch.equal(params[name], value), name


def test_keeps_the_last_checkpoints_in_the_folder(tmp_path):
    _run(tmp_path, every=5)
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.ckpt"))
    assert names == ["checkpoint-35.ckpt", "checkpoint-40.ckpt"]


def test_resumable_sampler_continues_part_way_and_starts_each_epoch_whole():
    sampler = ResumableSampler(10, seed=3)
    first = list(sampler)
    sampler.resume(0, 4)
    assert list(sampler) == first[4:]
    assert list(sampler) == first  # the skip applies to one pass only
    sampler.set_epoch(1)
    assert sorted(sampler) == list(range(10)) and list(sampler) != first


def test_invalid_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="every_n_train_steps must be 1 or more"):
        SpotLightningCallback(str(tmp_path), every_n_train_steps=0, watcher=InterruptionWatcher(handle_sigterm=False))


def test_example_arguments_parse():
    assert isinstance(lightning_tiny.parse_args([]), argparse.Namespace)
