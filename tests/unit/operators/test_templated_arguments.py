"""Every templated backend argument renders per try, shows in Rendered Template, and is validated once rendered.

One case per templated field of every backend: a Jinja value renders (Airflow's own
``render_template_fields``) into the backend the trigger is handed, and into what the
"Rendered Template" view stores (``serialize_template_field``); a value that renders to
something invalid fails the try with the message the DAG file would get for that value.
Both the generic operator (``backend=``) and the backend's convenience operator are driven.
"""

from __future__ import annotations

from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException
from airflow.serialization.helpers import serialize_template_field

from airflow_spot_training.backends.base import BackendConfigError
from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend
from airflow_spot_training.backends.ec2 import EC2SpotBackend
from airflow_spot_training.backends.local import LocalBackend
from airflow_spot_training.backends.sagemaker import SageMakerSpotBackend
from airflow_spot_training.backends.vertex_ai import VertexAISpotBackend
from airflow_spot_training.operators.compute_engine import ComputeEngineSpotTrainingOperator
from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.operators.sagemaker import SageMakerSpotTrainingOperator
from airflow_spot_training.operators.spot_training import SpotTrainingOperator
from airflow_spot_training.operators.vertex_ai import VertexAISpotTrainingOperator

WINDOW = "{{ data_interval_start | ds }}"
START = "2026-01-05"
CONTEXT = {"data_interval_start": pendulum.datetime(2026, 1, 5, tz="UTC"), "ds": START}

BASES: dict[type, dict[str, Any]] = {
    LocalBackend: {"command": ["python", "train.py"]},
    EC2SpotBackend: {"command": "python3 train.py", "image_id": "ami-0123456789abcdef0",
                     "instance_types": ["m5.large"]},
    SageMakerSpotBackend: {"image_uri": "1.dkr.ecr.us-east-1.amazonaws.com/t:1", "role_arn": "arn:aws:iam::1:role/r",
                           "instance_type": "ml.m5.large"},
    ComputeEngineSpotBackend: {"zones": ["us-central1-a"], "machine_type": "e2-small", "command": "python3 train.py",
                               "service_account": "train@p.iam.gserviceaccount.com", "project_id": "my-project"},
    VertexAISpotBackend: {"region": "us-central1", "machine_type": "n1-standard-4", "image_uri": "img",
                          "project_id": "my-project"},
}
CONVENIENCE = {EC2SpotBackend: EC2SpotTrainingOperator, SageMakerSpotBackend: SageMakerSpotTrainingOperator,
               ComputeEngineSpotBackend: ComputeEngineSpotTrainingOperator,
               VertexAISpotBackend: VertexAISpotTrainingOperator}
SPEC = {"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1, "container_spec": {"image_uri": "img"}}

# (backend, argument, Jinja value, its rendering, a Jinja value rendering to something bad, that bad value)
# A bad value renders through a native-object DAG (render_template_as_native_obj=True), where
# Jinja can yield any type: that is how a rendered value ends up with the wrong shape.
CASES = [
    (LocalBackend, "command", ["python", "train.py", "--since", WINDOW],
     ["python", "train.py", "--since", START], "{{ params.v }}", []),
    (LocalBackend, "env", {"DATA_SINCE": WINDOW}, {"DATA_SINCE": START}, "{{ params.v }}", {"DATA_SINCE": 7}),
    (EC2SpotBackend, "command", f"python3 train.py --since {WINDOW}", f"python3 train.py --since {START}",
     "{{ params.v }}", ""),
    (EC2SpotBackend, "image_id", "ami-{{ params.ami }}", "ami-0fedcba9876543210", "{{ params.v }}", 7),
    (EC2SpotBackend, "instance_types", ["{{ params.gpu }}", "m5.large"], ["g5.xlarge", "m5.large"],
     "{{ params.v }}", []),
    (EC2SpotBackend, "pools", [{"instance_type": "{{ params.gpu }}", "subnet_id": "subnet-1"}],
     [{"instance_type": "g5.xlarge", "subnet_id": "subnet-1"}], "{{ params.v }}", []),
    (EC2SpotBackend, "container_image", "train:{{ ds_nodash }}", "train:20260105", "{{ params.v }}", 7),
    (EC2SpotBackend, "env", {"DATA_SINCE": WINDOW}, {"DATA_SINCE": START}, "{{ params.v }}", {"DATA_SINCE": 7}),
    (SageMakerSpotBackend, "image_uri", "1.dkr.ecr.us-east-1.amazonaws.com/t:{{ ds_nodash }}",
     "1.dkr.ecr.us-east-1.amazonaws.com/t:20260105", "{{ params.v }}", 7),
    (SageMakerSpotBackend, "instance_type", "ml.{{ params.gpu }}", "ml.g5.xlarge", "{{ params.v }}", "g5.xlarge"),
    (SageMakerSpotBackend, "command", ["python", "train.py", WINDOW], ["python", "train.py", START],
     "{{ params.v }}", [7]),
    (SageMakerSpotBackend, "arguments", ["--since", WINDOW], ["--since", START], "{{ params.v }}", [7]),
    (SageMakerSpotBackend, "hyperparameters", {"since": WINDOW}, {"since": START}, "{{ params.v }}", {"lr": 7}),
    (SageMakerSpotBackend, "environment", {"DATA_SINCE": WINDOW}, {"DATA_SINCE": START},
     "{{ params.v }}", {"DATA_SINCE": 7}),
    (SageMakerSpotBackend, "input_data_config",
     [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": f"s3://data/{WINDOW}/"}}}],
     [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": f"s3://data/{START}/"}}}],
     "{{ params.v }}", "s3://data/"),
    (SageMakerSpotBackend, "output_s3_uri", f"s3://models/{WINDOW}", f"s3://models/{START}",
     "{{ params.v }}", "gs://models/"),
    (ComputeEngineSpotBackend, "machine_type", "{{ params.machine }}", "n1-standard-8", "{{ params.v }}", 7),
    (ComputeEngineSpotBackend, "command", f"python3 train.py --since {WINDOW}", f"python3 train.py --since {START}",
     "{{ params.v }}", 7),
    (ComputeEngineSpotBackend, "image", "projects/p/global/images/train-{{ ds_nodash }}",
     "projects/p/global/images/train-20260105", "{{ params.v }}", 7),
    (ComputeEngineSpotBackend, "env", {"DATA_SINCE": WINDOW}, {"DATA_SINCE": START},
     "{{ params.v }}", {"DATA_SINCE": 7}),
    (VertexAISpotBackend, "machine_type", "{{ params.machine }}", "n1-standard-8", "{{ params.v }}", 7),
    (VertexAISpotBackend, "image_uri", "img:{{ ds_nodash }}", "img:20260105", "{{ params.v }}", 7),
    (VertexAISpotBackend, "command", ["python", "train.py", WINDOW], ["python", "train.py", START],
     "{{ params.v }}", [7]),
    (VertexAISpotBackend, "args", ["--since", WINDOW], ["--since", START], "{{ params.v }}", [7]),
    (VertexAISpotBackend, "env", {"DATA_SINCE": WINDOW}, {"DATA_SINCE": START}, "{{ params.v }}", {"DATA_SINCE": 7}),
    (VertexAISpotBackend, "worker_pool_specs", [{**SPEC, "container_spec": {"image_uri": "img:{{ ds_nodash }}"}}],
     [{**SPEC, "container_spec": {"image_uri": "img:20260105"}}], "{{ params.v }}", [{"bogus": 1}]),
]
PARAMS = {"ami": "0fedcba9876543210", "gpu": "g5.xlarge", "machine": "n1-standard-8"}


def _arguments(backend_class: type, name: str, value: Any) -> dict[str, Any]:
    arguments = {**BASES[backend_class], name: value}
    if name == "pools":
        arguments.pop("instance_types")
    if name == "worker_pool_specs":
        arguments.pop("machine_type"), arguments.pop("image_uri")
    return arguments


def _render(operator: SpotTrainingOperator, params: dict[str, Any]) -> None:
    context = {**CONTEXT, "ds_nodash": START.replace("-", ""), "params": params}
    operator.render_template_fields(context)  # type: ignore[arg-type]


def _in_dag(native: bool, make: Any) -> SpotTrainingOperator:
    with DAG(f"templated_native_{native}", schedule=None, render_template_as_native_obj=native):
        return make()


def _both(backend_class: type, arguments: dict[str, Any], native: bool = False) -> list[SpotTrainingOperator]:
    makers = [lambda: SpotTrainingOperator(task_id="train", backend=backend_class(**arguments))]
    if backend_class in CONVENIENCE:
        makers.append(lambda: CONVENIENCE[backend_class](task_id="train", **arguments))
    return [_in_dag(native, make) for make in makers]


@pytest.mark.parametrize(("backend_class", "name", "template", "rendered", "bad", "bad_value"), CASES,
                         ids=[f"{case[0].__name__}.{case[1]}" for case in CASES])
class TestTemplatedBackendArgument:
    def test_is_declared_templated(self, backend_class, name, template, rendered, bad, bad_value):
        assert name in backend_class.template_fields
        assert f":param {name}:" in backend_class.__doc__ and "(templated)" in backend_class.__doc__

    def test_renders_per_try_and_shows_in_rendered_template(self, backend_class, name, template, rendered, bad,
                                                            bad_value):
        for operator in _both(backend_class, _arguments(backend_class, name, template)):
            assert getattr(operator.backend, name) == template  # kept as written until the try renders it
            _render(operator, PARAMS)
            assert getattr(operator.backend, name) == rendered
            operator._validate_rendered()
            classpath, shown = serialize_template_field(operator.backend, "backend")  # what the UI stores
            assert classpath.endswith(backend_class.__name__) and shown[name] == rendered
            assert operator.backend.serialize()[1][name] == rendered  # what the trigger is handed

    def test_a_bad_rendered_value_fails_the_try_with_the_parse_time_message(
            self, backend_class, name, template, rendered, bad, bad_value):
        with pytest.raises(BackendConfigError) as at_parse_time:
            backend_class(**_arguments(backend_class, name, bad_value))
        for operator in _both(backend_class, _arguments(backend_class, name, bad), native=True):
            _render(operator, {**PARAMS, "v": bad_value})
            with pytest.raises(AirflowFailException) as at_run_time:
                operator._validate_rendered()
            assert str(at_parse_time.value) in str(at_run_time.value)
            assert name in str(at_run_time.value)


def test_every_templated_argument_has_a_case():
    covered = {(case[0], case[1]) for case in CASES}
    declared = {(cls, name) for cls in BASES for name in cls.template_fields}
    assert declared == covered
