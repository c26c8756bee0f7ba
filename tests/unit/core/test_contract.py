from __future__ import annotations

import pytest

from airflow_spot_training.core.contract import Contract, attempt_token, read_contract, run_key


class TestContract:
    def test_env_round_trip(self):
        c = Contract("s3://b/p", 3, "spot", 2, "abc", "s3://b/p/_results/attempt-3.json")
        assert read_contract(c.to_env()) == c

    def test_missing_variables_are_named(self):
        with pytest.raises(RuntimeError, match="SPOT_TRAINING_CHECKPOINT_URI"):
            read_contract({})

    def test_run_key_is_stable_and_distinct(self):
        a = run_key("dag", "run", "task", -1)
        assert a == run_key("dag", "run", "task", -1)
        assert a != run_key("dag", "run", "task", 0)
        assert len(a) == 20 and a.isalnum() and a == a.lower()

    def test_attempt_token_fits_a_client_token(self):
        token = attempt_token(run_key("d" * 250, "r" * 250, "t" * 250, 5), 999)
        assert len(token) <= 64 and token.isascii()


def test_the_deployment_id_salts_run_keys_and_an_unsalted_key_is_unchanged():
    import hashlib

    old = hashlib.sha256("d\x1fr\x1ft\x1f-1".encode()).hexdigest()[:20]  # how version 1 derived it
    assert run_key("d", "r", "t") == old
    assert run_key("d", "r", "t", deployment="prod-a") != run_key("d", "r", "t", deployment="prod-b") != old
