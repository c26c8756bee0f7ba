"""EC2SpotBackend pieces that need no cloud: validation, launch parameters, state mapping, bootstrap."""

from __future__ import annotations

import json
import os
import subprocess
import datetime as dt
from pathlib import Path

import pytest

from airflow_spot_training.backends.base import BackendConfigError, LaunchRequest, SpotBackend
from airflow_spot_training.backends.ec2 import (
    EC2Handle,
    EC2SpotBackend,
    classify_instance,
    on_demand_price_from_product,
    settle_ended,
)
from airflow_spot_training.bootstrap import render_ec2_user_data
from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError
from airflow_spot_training.triggers.spot_training import SpotTrainingTrigger


def backend(**kwargs):
    args = dict(image_id="ami-0abc", instance_types=["c5.xlarge", "m5.xlarge"], subnet_ids=["subnet-a", "subnet-b"])
    args.update(kwargs)
    return EC2SpotBackend(args.pop("command", "python3 train.py"), **args)


def request(capacity=Capacity.SPOT, attempt=1, result_uri="s3://b/p/_results/attempt-1.json"):
    contract = Contract("s3://b/p", attempt, capacity.value, 0, "0123456789abcdef0123", result_uri)
    labels = {"dag_id": "d", "run_id": "r", "task_id": "train", "map_index": "-1", "attempt": str(attempt),
              "run_key": "0123456789abcdef0123"}
    return LaunchRequest(contract, capacity, f"0123456789abcdef0123-a{attempt}", labels)


class TestEC2SpotBackendConfig:
    @pytest.mark.parametrize("kwargs, fragment", [
        ({"command": ""}, "command='' is invalid: give the training command"),
        ({"image_id": None}, "image_id='ami-...' or launch_template"),
        ({"launch_template": {"Version": "1"}}, "must name the template"),
        ({"instance_types": []}, "instance_types=[] is invalid (List should have at least 1 item"),
        ({"instance_types": None, "pools": [{"subnet_id": "s"}]}, "pools=[{'subnet_id': 's'}] is invalid: entry"),
        ({"pools": [{"instance_type": "c5.large"}]}, "either pools=[...] or instance_types"),
        ({"root_volume_gb": 0}, "root_volume_gb=0 is invalid (Input should be greater than 0)"),
        ({"on_demand_prices": {"c5.xlarge": -1}}, "on_demand_prices['c5.xlarge']=-1 is invalid"),
        ({"describe_interval": 0}, "describe_interval=0"),
        ({"env": {"1BAD": "x"}}, "['1BAD'] are not environment variable names"),
        ({"secrets": {"BAD NAME": "arn:aws:secretsmanager:us-east-1:1:secret:x"}}, "are not environment variable"),
        ({"instance_type": "g5.xlarge"}, "has no argument instance_type=. Did you mean instance_types="),
    ])
    def test_invalid_arguments_fail_naming_the_argument(self, kwargs, fragment):
        with pytest.raises(BackendConfigError) as raised:
            backend(**kwargs)
        assert fragment in str(raised.value)

    def test_operator_reports_backend_errors_at_parse_time(self):
        with pytest.raises(SpotTrainingConfigError, match="train: .*instance_types"):
            EC2SpotTrainingOperator(task_id="train", command="x", image_id="ami-1", instance_types=[])

    def test_serialize_round_trip(self):
        original = backend(on_demand_prices={"c5.xlarge": 0.17}, tags={"team": "ml"}, describe_interval=5.0)
        classpath, kwargs = original.serialize()
        rebuilt = SpotBackend.deserialize(classpath, json.loads(json.dumps(kwargs)))
        assert rebuilt.serialize() == (classpath, kwargs)

    def test_trigger_serialize_round_trip_with_an_ec2_backend(self):
        classpath, kwargs = backend().serialize()
        trigger = SpotTrainingTrigger(backend_classpath=classpath, backend_kwargs=kwargs,
                                      handle={"instance_id": "i-1", "token": "t"}, attempt=1,
                                      checkpoint_prefix="s3://b/p", poll_interval=5)
        path, trigger_kwargs = trigger.serialize()
        again = SpotTrainingTrigger(**json.loads(json.dumps(trigger_kwargs)))
        assert again.serialize() == (path, trigger_kwargs)
        assert isinstance(again.backend, EC2SpotBackend)

    def test_pools_are_instance_types_times_subnets_in_order(self):
        assert backend().capacity_pools() == [
            {"instance_type": "c5.xlarge", "subnet_id": "subnet-a"},
            {"instance_type": "c5.xlarge", "subnet_id": "subnet-b"},
            {"instance_type": "m5.xlarge", "subnet_id": "subnet-a"},
            {"instance_type": "m5.xlarge", "subnet_id": "subnet-b"},
        ]

    def test_triggers_share_describe_calls_at_the_task_poll_interval(self):
        classpath, kwargs = backend().serialize()
        trigger = SpotTrainingTrigger(backend_classpath=classpath, backend_kwargs=kwargs,
                                      handle={"backend": "ec2", "instance_id": "i-1", "token": "t", "attempt": 1,
                                              "capacity": "spot"},
                                      attempt=1, checkpoint_prefix="s3://b/p", poll_interval=15)
        assert trigger.backend.describe_interval == 15
        assert backend(describe_interval=5.0).serialize()[1]["describe_interval"] == 5.0


class TestRunInstancesParams:
    def test_spot_launch(self):
        params = backend(instance_profile="arn:aws:iam::1:instance-profile/p", root_volume_gb=80,
                         security_group_ids=["sg-1"]).run_instances_params(
            request(), {"instance_type": "c5.xlarge", "subnet_id": "subnet-b"}, 1)
        assert params["ClientToken"] == "0123456789abcdef0123-a1-p1" and len(params["ClientToken"]) <= 64
        assert params["InstanceMarketOptions"] == {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        assert "MaxPrice" not in json.dumps(params)
        assert params["InstanceInitiatedShutdownBehavior"] == "terminate"
        assert params["InstanceType"] == "c5.xlarge" and params["SubnetId"] == "subnet-b"
        assert params["IamInstanceProfile"] == {"Arn": "arn:aws:iam::1:instance-profile/p"}
        assert params["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 80
        tags = {t["Key"]: t["Value"] for t in params["TagSpecifications"][0]["Tags"]}
        assert tags["spot-training:run-key"] == "0123456789abcdef0123"
        assert tags["spot-training:token"] == "0123456789abcdef0123-a1"
        assert {tags["spot-training:dag-id"], tags["spot-training:run-id"], tags["spot-training:task-id"]} == {
            "d", "r", "train"}
        assert "SPOT_TRAINING_ATTEMPT=1" in params["UserData"]

    def test_tags_satisfy_the_documented_iam_conditions(self):
        labelled = request()
        labelled.labels["deployment"] = "3f9c2a71b0de"
        params = backend().run_instances_params(labelled, {"instance_type": "c5.xlarge"}, 0)
        for spec in params["TagSpecifications"]:
            tags = {t["Key"]: t["Value"] for t in spec["Tags"]}
            assert tags["spot-training:deployment"] == "3f9c2a71b0de"
            assert all(k.startswith("spot-training:") or k == "Name" for k in tags)  # aws:TagKeys in the policy

    def test_imdsv2_is_required(self):
        params = backend().run_instances_params(request(), {"instance_type": "c5.xlarge"}, 0)
        assert params["MetadataOptions"]["HttpTokens"] == "required"

    def test_secrets_travel_as_references_and_are_resolved_on_the_instance(self):
        arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf"
        user_data = backend(secrets={"HF_TOKEN": arn}, env={"PLAIN": "visible"}).user_data(request())
        assert f"HF_TOKEN=\"$(resolve_secret {arn})\"" in user_data
        assert "export PLAIN=visible" in user_data  # plain env is in the user data, as documented
        assert "SPOT_TRAINING_TOKEN=0123456789abcdef0123-a1" in user_data

    def test_on_demand_launch_from_a_launch_template(self):
        b = backend(image_id=None, instance_types=None, launch_template={"LaunchTemplateName": "lt", "Version": "3"})
        params = b.run_instances_params(request(Capacity.ON_DEMAND, 3), b.capacity_pools()[0], 0)
        assert "InstanceMarketOptions" not in params
        assert params["LaunchTemplate"] == {"LaunchTemplateName": "lt", "Version": "3"}
        assert "ImageId" not in params and "InstanceType" not in params and params["SubnetId"] == "subnet-a"


def instance(state, code="", spot=False):
    data = {"InstanceId": "i-1", "State": {"Name": state}, "LaunchTime": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    if code:
        data["StateReason"] = {"Code": code, "Message": f"{code}: msg"}
    if spot:
        data["SpotInstanceRequestId"] = "sir-1"
    return data


def ec2_handle(**fields) -> EC2Handle:
    values = {"backend": "ec2", "token": "run-a1", "attempt": 1, "capacity": "spot", "instance_id": "i-1",
              "launched_at": 0.0, **fields}
    return EC2Handle(**values)


class TestClassifyInstance:
    @pytest.mark.parametrize("state, code, spot, expected, needs", [
        ("pending", "", False, "pending", None),
        ("running", "", False, "running", None),
        ("terminated", "Server.SpotInstanceTermination", True, "preempted", "result"),
        ("stopped", "Server.SpotInstanceShutdown", True, "preempted", "result"),
        ("terminated", "Client.InstanceInitiatedShutdown", False, "failed", "result"),
        ("shutting-down", "Client.InstanceInitiatedShutdown", False, "failed", "result"),
        ("terminated", "Client.UserInitiatedShutdown", False, "stopped", "result"),
        ("terminated", "Server.InternalError", False, "failed", "result"),
        ("terminated", "Server.InsufficientInstanceCapacity", True, "capacity_unavailable", "result"),
        ("terminated", "", True, "failed", "spot-request"),
    ])
    def test_states_and_reasons(self, state, code, spot, expected, needs):
        status, need = classify_instance(instance(state, code, spot), ec2_handle())
        assert (status.state, need) == (expected, needs)
        if expected == "preempted":
            assert status.preemptions == 1

    def test_the_result_record_of_this_attempt_settles_how_it_ended(self):
        def settle(code: str, record: dict | None):
            status, _ = classify_instance(instance("terminated", code, True), ec2_handle())
            return settle_ended(status, record, "run-a1")

        assert settle("Client.InstanceInitiatedShutdown", {"exit_code": 0, "token": "run-a1"}).state == "succeeded"
        failed = settle("Client.InstanceInitiatedShutdown", {"exit_code": 2, "token": "run-a1"})
        assert failed.state == "failed" and "code 2" in failed.reason
        assert "without writing its result record" in settle("Client.InstanceInitiatedShutdown", None).reason
        # the training caught the two-minute notice, checkpointed, exited 143: a preemption
        caught = settle("Client.InstanceInitiatedShutdown", {"exit_code": 143, "token": "run-a1",
                                                             "reclaim_notice": True})
        assert caught.state == "preempted" and caught.preemptions == 1
        # the training had finished when the reclaim came: a success
        done = settle("Server.SpotInstanceTermination", {"exit_code": 0, "token": "run-a1"})
        assert done.state == "succeeded" and done.preemptions == 0
        # reclaimed; the record a training killed by the shutdown left does not make it a failure
        assert settle("Server.SpotInstanceTermination", {"exit_code": 143, "token": "run-a1"}).state == "preempted"

    def test_a_result_record_of_another_run_is_ignored(self):
        status, _ = classify_instance(instance("terminated", "Client.InstanceInitiatedShutdown"), ec2_handle())
        settled = settle_ended(status, {"exit_code": 0, "token": "earlier-run-a1"}, "run-a1")
        assert settled.state == "failed" and "ignored_result_record" in settled.details

    def test_a_malformed_record_is_named(self):
        status, _ = classify_instance(instance("terminated", "Client.InstanceInitiatedShutdown"), ec2_handle())
        settled = settle_ended(status, {"token": "run-a1", "exit_code": None,
                                        "malformed": "the record s3://b/r.json is malformed"}, "run-a1")
        assert settled.state == "failed" and "s3://b/r.json is malformed" in settled.reason

    @pytest.mark.parametrize("code, expected", [
        ("instance-terminated-no-capacity", "preempted"), ("marked-for-termination", "preempted"),
        ("capacity-not-available", "capacity_unavailable"), ("something-else", "failed"),
    ])
    def test_spot_request_codes(self, code, expected):
        status, _ = classify_instance(instance("terminated", "", True), ec2_handle())
        assert settle_ended(status, None, "run-a1", code).state == expected

    def test_unknown_instance_is_pending_right_after_launch_then_failed(self):
        import time

        assert classify_instance(None, ec2_handle(launched_at=time.time()))[0].state == "pending"
        assert classify_instance(None, ec2_handle(launched_at=0.0))[0].state == "failed"


def test_pricing_api_product_is_parsed():
    product = {"terms": {"OnDemand": {"X.Y": {"priceDimensions": {"X.Y.Z": {"pricePerUnit": {"USD": "1.0060000000"}}}}}}}
    assert on_demand_price_from_product([json.dumps(product)]) == pytest.approx(1.006)
    assert on_demand_price_from_product([]) is None


class TestUserData:
    def test_rendered_script_runs_the_command_with_the_contract_and_writes_the_result(self, tmp_path):
        result_uri = str(tmp_path / "ckpt" / "_results" / "attempt-2.json")
        contract = Contract(str(tmp_path / "ckpt"), 2, "spot", 1, "0123456789abcdef0123", result_uri)
        seen = tmp_path / "seen.txt"
        script = render_ec2_user_data(
            contract, command=f"env | grep -E '^(SPOT_TRAINING_|EXTRA=)' | sort > {seen}; exit 0",
            env={"EXTRA": "it's quoted"}, shutdown_command=f"touch {tmp_path / 'shutdown-called'}",
            log_file=str(tmp_path / "bootstrap.log"),
        )
        path = tmp_path / "user-data.sh"
        path.write_text(script)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOT_TRAINING_")}
        subprocess.run(["bash", str(path)], check=True, env=env, timeout=60)

        lines = seen.read_text().splitlines()
        assert f"SPOT_TRAINING_CHECKPOINT_URI={tmp_path / 'ckpt'}" in lines
        assert "SPOT_TRAINING_ATTEMPT=2" in lines and "SPOT_TRAINING_CAPACITY=spot" in lines
        assert "SPOT_TRAINING_PREEMPTIONS=1" in lines and "EXTRA=it's quoted" in lines
        record = json.loads(Path(result_uri).read_text())
        assert record["exit_code"] == 0 and record["attempt"] == 2
        assert (tmp_path / "shutdown-called").exists()

    def test_a_failing_command_is_recorded_and_the_machine_still_shuts_down(self, tmp_path):
        result_uri = str(tmp_path / "r.json")
        contract = Contract(str(tmp_path), 1, "spot", 0, "k" * 20, result_uri)
        script = render_ec2_user_data(contract, command="exit 7", shutdown_command=f"touch {tmp_path / 'down'}",
                                      log_file=str(tmp_path / "log"))
        (tmp_path / "u.sh").write_text(script)
        subprocess.run(["bash", str(tmp_path / "u.sh")], check=True, timeout=60)
        assert json.loads(Path(result_uri).read_text())["exit_code"] == 7
        assert (tmp_path / "down").exists()

    def test_user_data_size_is_checked(self):
        contract = Contract("s3://b/p", 1, "spot", 0, "k" * 20, "s3://b/p/_results/attempt-1.json")
        with pytest.raises(ValueError, match="at most 16384"):
            render_ec2_user_data(contract, command="x" * 20000)
