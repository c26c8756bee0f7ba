"""SpotTrainingOperator: invalid arguments fail at DAG parse time with a message naming the fix."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import pytest

from airflow_spot_training.backends.local import LocalBackend
from airflow_spot_training.core.policies import DeadlineAwarePolicy, GreedyPolicy
from airflow_spot_training.core.policy import Action, Decision, ThresholdPolicy
from airflow_spot_training.operators.spot_training import (
    SpotTrainingConfigError,
    SpotTrainingOperator,
    default_checkpoint_prefix,
)

BACKEND = LocalBackend(command=[sys.executable, "-c", "pass"])


def make(**kw):
    kw.setdefault("backend", BACKEND)
    return SpotTrainingOperator(task_id="train", **kw)


class TestSpotTrainingOperatorArguments:
    def test_defaults(self):
        op = make()
        assert op.deferrable is True
        assert isinstance(op.escalation_policy, ThresholdPolicy) and op.escalation_policy.max_preemptions == 3
        assert op.restart_overhead == BACKEND.default_restart_overhead
        assert set(op.template_fields) == {"checkpoint_prefix", "deadline", "backend", "init_from"}

    def test_defaults_without_a_deadline_keep_the_threshold_rule(self):
        op = make(expected_runtime=timedelta(hours=6))
        assert isinstance(op.escalation_policy, ThresholdPolicy) and op.escalation_policy.max_preemptions == 3
        assert op.max_spot_wait == 3600

    def test_deadline_and_expected_runtime_make_the_deadline_aware_policy_the_default(self):
        op = make(deadline="8h", expected_runtime=timedelta(hours=6))
        assert isinstance(op.escalation_policy, DeadlineAwarePolicy)
        assert op.escalation_policy.max_preemptions is None
        assert op.max_spot_wait is None  # the deadline bounds the waiting

    def test_explicit_caps_still_apply_under_the_deadline_aware_default(self):
        op = make(deadline="8h", expected_runtime=timedelta(hours=6), max_preemptions=2,
                  max_spot_wait=timedelta(minutes=10))
        assert isinstance(op.escalation_policy, DeadlineAwarePolicy)
        assert op.escalation_policy.max_preemptions == 2 and op.max_spot_wait == 600

    def test_a_chosen_policy_wins_over_the_default(self):
        op = make(deadline="8h", expected_runtime=timedelta(hours=6), escalation_policy="greedy")
        assert isinstance(op.escalation_policy, GreedyPolicy) and op.max_spot_wait == 3600
        named = make(escalation_policy="threshold", max_preemptions=1)
        assert named.escalation_policy.max_preemptions == 1

    def test_backend_by_name_needs_its_settings(self):
        with pytest.raises(SpotTrainingConfigError, match="train: LocalBackend needs command"):
            make(backend="local")

    def test_unknown_backend(self):
        with pytest.raises(SpotTrainingConfigError, match=r"backend='azure-batch' is not a backend.*local"):
            make(backend="azure-batch")

    @pytest.mark.parametrize("value", [-1, 1.5, "2", True])
    def test_bad_threshold(self, value):
        with pytest.raises(SpotTrainingConfigError, match=r"max_preemptions=.* is invalid: give 0 or a positive"):
            make(max_preemptions=value)

    def test_naive_deadline(self):
        with pytest.raises(SpotTrainingConfigError, match="naive datetime: give it a timezone"):
            make(deadline=datetime(2030, 1, 1))

    def test_unparsable_deadline(self):
        with pytest.raises(SpotTrainingConfigError, match=r"deadline='by friday' is not understood"):
            make(deadline="by friday")

    def test_templated_deadline_is_checked_after_rendering(self):
        assert make(deadline="{{ params.deadline }}").deadline == "{{ params.deadline }}"

    @pytest.mark.parametrize("deadline", [timedelta(hours=6), "6h", datetime(2030, 1, 1, tzinfo=timezone.utc)])
    def test_good_deadlines(self, deadline):
        make(deadline=deadline)

    def test_policy_without_decide(self):
        with pytest.raises(SpotTrainingConfigError, match="has no decide"):
            make(escalation_policy=object())

    def test_custom_policy_is_kept(self):
        class AlwaysOnDemand:
            def decide(self, state):
                return Decision(Action.ON_DEMAND, "always")

        policy = AlwaysOnDemand()
        assert make(escalation_policy=policy).escalation_policy is policy

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"poll_interval": 0}, "poll_interval=0 is invalid"),
            ({"poll_interval": "fast"}, "poll_interval='fast' is invalid"),
            ({"max_attempts": 0}, "max_attempts=0 is invalid"),
            ({"max_spot_wait": -1}, "max_spot_wait=-1 is invalid"),
            ({"restart_overhead": timedelta(seconds=-5)}, "restart_overhead=-5.0 is invalid"),
            ({"checkpoint_prefix": 42}, "checkpoint_prefix must be a string"),
        ],
    )
    def test_other_bad_arguments(self, kwargs, message):
        with pytest.raises(SpotTrainingConfigError, match=message):
            make(**kwargs)


def test_default_checkpoint_prefix_is_path_safe():
    prefix = default_checkpoint_prefix("s3://b/base/", "dag", "manual__2026-11-22T06:36:40+00:00", "train", -1)
    assert prefix == "s3://b/base/dag/manual__2026-11-22T06%3A36%3A40+00%3A00/train"
    assert default_checkpoint_prefix("/x", "d", "r", "t", 3) == "/x/d/r/t/3"


def test_default_checkpoint_prefix_keeps_distinct_run_ids_distinct():
    prefixes = {default_checkpoint_prefix("/x", "d", run_id, "t", -1) for run_id in ("a:b", "a_b", "a/b", "a%3Ab")}
    assert len(prefixes) == 4
    assert all(p.count("/") == 4 for p in prefixes)  # a run id never adds a directory level


@pytest.mark.parametrize("run_id", [".", ".."])
def test_default_checkpoint_prefix_refuses_dot_components(run_id):
    with pytest.raises(SpotTrainingConfigError, match="cannot be a path component"):
        default_checkpoint_prefix("/x", "d", run_id, "t", -1)


class TestDefaultDeferrable:
    """deferrable=True stays the default; a deployment without a triggerer turns it off in [spot_training]."""

    def test_deferrable_by_default(self, monkeypatch):
        monkeypatch.delenv("AIRFLOW__SPOT_TRAINING__DEFAULT_DEFERRABLE", raising=False)
        assert make().deferrable is True

    def test_the_config_turns_it_off_for_every_task_that_does_not_say(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW__SPOT_TRAINING__DEFAULT_DEFERRABLE", "false")
        assert make().deferrable is False
        assert make(deferrable=True).deferrable is True

    def test_the_config_option_is_declared_in_the_provider_info(self):
        from airflow_spot_training.get_provider_info import get_provider_info

        option = get_provider_info()["config"]["spot_training"]["options"]["default_deferrable"]
        assert option["type"] == "boolean" and option["default"] == "True"
