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


class TestGangContract:
    def test_a_node_is_told_its_rank_the_gang_and_rank_0s_address(self):
        gang = Contract("s3://b/p", 2, "spot", 1, "abc", num_nodes=3)
        node = gang.for_node(2, "10.0.0.5", 29500)
        env = node.to_env()
        assert {k: env[k] for k in ("SPOT_TRAINING_NODE_RANK", "SPOT_TRAINING_NUM_NODES", "SPOT_TRAINING_MASTER_ADDR",
                                    "SPOT_TRAINING_MASTER_PORT")} == {
            "SPOT_TRAINING_NODE_RANK": "2", "SPOT_TRAINING_NUM_NODES": "3",
            "SPOT_TRAINING_MASTER_ADDR": "10.0.0.5", "SPOT_TRAINING_MASTER_PORT": "29500"}
        # the standard torch.distributed variables: init_process_group("gloo") needs no arguments
        assert {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")} == {
            "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}
        assert read_contract(env) == node

    def test_a_single_node_contract_has_no_gang_variables(self):
        env = Contract("s3://b/p", 1, "spot", 0, "abc").to_env()
        assert not {"SPOT_TRAINING_NODE_RANK", "RANK", "MASTER_ADDR", "WORLD_SIZE"} & set(env)
        assert read_contract(env).num_nodes == 1

    def test_a_rank_outside_the_gang_is_refused(self):
        with pytest.raises(ValueError, match="node_rank=3 is not in a gang of num_nodes=3"):
            Contract("s3://b/p", 1, "spot", 0, "abc", num_nodes=3).for_node(3, "10.0.0.5")
