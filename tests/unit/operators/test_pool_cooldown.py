"""pool_cooldown=: checked when the DAG is parsed; 0 turns pool health off, a default comes from the config."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest

from airflow_spot_training.backends.local import LocalBackend
from airflow_spot_training.core.attempt import AttemptState
from airflow_spot_training.core.ledger import AttemptRecord
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError, SpotTrainingOperator

BACKEND = LocalBackend(command=[sys.executable, "-c", "pass"])


@pytest.mark.parametrize("value", [-1, "30m", True])
def test_a_bad_cooldown_names_the_argument_and_the_fix(value):
    with pytest.raises(SpotTrainingConfigError, match=rf"pool_cooldown={value!r} is invalid: give a number of "
                                                      r"seconds >= 0 or a timedelta"):
        SpotTrainingOperator(task_id="train", backend=BACKEND, pool_cooldown=value)


def test_a_timedelta_is_seconds():
    assert SpotTrainingOperator(task_id="train", backend=BACKEND, pool_cooldown=timedelta(hours=1)).pool_cooldown == 3600


def test_a_backend_without_a_ladder_is_left_alone():
    op = SpotTrainingOperator(task_id="train", backend=BACKEND, pool_cooldown=600)
    record = AttemptRecord(1, "spot", "t", 1, outcome=AttemptState.LAUNCHING)
    assert BACKEND.capacity_ladder() == [] and op._pool_rule(record) is None
