"""The five backends, each with a cloud that runs its machines for real.

Every :class:`Cloud` plays its cloud at the API boundary and runs the training of each
attempt as a real process, the way the cloud's machine would:

* ``local``: the real :class:`LocalBackend`; its supervisor runs the training. Reclaims
  go through its ``preempt-now`` hook (notice = SIGTERM, then the supervisor's hard kill).
* ``ec2``: moto on loopback. A RunInstances starts the instance's real rendered user
  data (``bootstrap/ec2_user_data.sh``) with bash, with a loopback IMDS
  (:mod:`tests.conformance.imds`); checkpoints and result records go to moto's S3. A
  reclaim is the IMDS notice, then (if the training is still there after the notice
  window) a hard kill and ``Server.SpotInstanceTermination``; the bootstrap's own shutdown
  is ``Client.InstanceInitiatedShutdown``; TerminateInstances ends the machine's processes.
* ``sagemaker``: moto on loopback (``tests/aws_cloud.py`` ``SageMakerCloud``). A job runs
  its container command with SageMaker's checkpoint behaviour: ``CheckpointConfig.S3Uri``
  restored into a local directory before start and synced back while it runs; a reclaim
  is SIGTERM, a hard kill after the window, an ``Interrupted`` transition, and a restart
  of the job in place (another process, same job) once someone looks at the job again.
* ``compute_engine``: the loopback fake (``tests/fakes/gce_server.py``). An insert runs
  the VM's startup script (from its metadata) with bash; a reclaim is ``instance/preempted``
  = TRUE plus SIGTERM, a hard kill after the window, and ``fake.preempt(name)``; deleting
  the VM through the API ends its processes.
* ``vertex_ai``: the loopback gRPC fake (``tests/fakes/vertex_server.py``). A CustomJob runs
  its container command with the worker pool's env and ``AIP_CHECKPOINT_DIR``; a reclaim
  is SIGTERM, a hard kill, and the job FAILED with UNAVAILABLE and ``start_time`` set.

Each cloud also records the calls the backend made (launches with their capacity, and
stops: TerminateInstances, StopTrainingJob, a DELETE of a VM, CancelCustomJob) and counts
what is still alive (instances, jobs, VMs, processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from airflow_spot_training.core.contract import run_key
from airflow_spot_training.core.policy import ThresholdPolicy
from airflow_spot_training.operators.spot_training import SpotTrainingOperator
from tests.conformance.fleet import (
    NOTICE_WINDOW,
    TICK,
    Fleet,
    MachineProcess,
    freeze_consistently,
    read_reported_step,
    wait_until,
)
from tests.conformance.harness import TaskRun
from tests.conformance.imds import FakeIMDS
from tests.fakes.logging_server import CloudLoggingServer

TRAININGS = Path(__file__).parent / "trainings"
VENV_BIN = str(Path(sys.executable).parent)
POLL = 0.05
#: how often the trainings ask the metadata service for a notice
NOTICE_POLL = 0.1


@dataclass
class Training:
    """What the machines run: the guide's script or a variant, with its options.

    :param script: ``"guide"`` (``airflow_spot_training.examples.resumable``) or a file name
        under ``tests/conformance/trainings/``.
    :param steps: steps of the whole training.
    :param every: steps between two periodic checkpoints.
    :param step_seconds: seconds one step takes.
    :param extra: more arguments for the script.
    """

    script: str = "guide"
    steps: int = 12
    every: int = 4
    step_seconds: float = 0.05
    extra: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        target = (["-m", "airflow_spot_training.examples.resumable"] if self.script == "guide"
                  else [str(TRAININGS / self.script)])
        return [sys.executable, *target, "--steps", str(self.steps), "--checkpoint-every", str(self.every),
                "--step-seconds", str(self.step_seconds), *self.extra]


@dataclass
class Calls:
    """What the backend asked its cloud to do, normalized across clouds."""

    launches: list[str] = field(default_factory=list)  # the capacity of every launch that created something
    refused: list[str] = field(default_factory=list)  # launches the cloud refused (no capacity, throttled)
    stops: list[str] = field(default_factory=list)  # what was stopped, terminated, deleted or cancelled


def machine_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a machine's processes: the test's Python, loopback endpoints only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "SPOT_TRAINING_"))}
    env["PATH"] = f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin"
    env["SPOT_TRAINING_NOTICE_POLL_SECONDS"] = str(NOTICE_POLL)
    # a progress record per step on object stores too, so recomputed_steps is exact (the default, 5 s,
    # bounds what it may miss on a real bucket)
    env["SPOT_TRAINING_PROGRESS_SECONDS"] = "0"
    env.update(extra)
    return env


def progress_uri(prefix: str, attempt: int) -> str:
    """Where attempt ``attempt``'s training reports its progress (the operator reads it there)."""
    return f"{prefix.rstrip('/')}/_progress/attempt-{attempt}.json"


class Cloud(ABC):
    """One backend and the cloud it runs on, for one test.

    :param root: a directory of the test's own.
    :param imds: the loopback instance metadata service (machines of every cloud get a URL,
        so the guide's ``InterruptionWatcher(aws_imds=True)`` never leaves loopback).
    """

    name: str = "abstract"

    def __init__(self, root: Path, imds: FakeIMDS) -> None:
        self.root = root
        self.imds = imds
        self.fleet = Fleet(root / "machines")
        self.calls = Calls()
        self.fail_to_start: set[int] = set()
        self.status_api_down = False
        self.throttle_launches = 0
        self.throttle_polls = 0
        self.spot_outage_launches = 0
        self.no_capacity_at_all = False
        self.launch_gate: threading.Event | None = None
        self.launch_blocked = threading.Event()
        #: cleared: machines are created but do not boot (a job stays pending) until it is set again
        self.starts_released = threading.Event()
        self.starts_released.set()
        self._lock = threading.Lock()

    # -- building the operator ---------------------------------------------------------
    def prefix(self, tag: str = "run") -> str:
        return str(self.root / "checkpoints" / tag)

    @abstractmethod
    def backend(self, training: Training, **options: Any) -> Any:
        """The backend object, configured to run ``training`` on this cloud."""

    def operator(self, training: Training, prefix: str, *, backend_options: dict[str, Any] | None = None,
                 **kwargs: Any) -> SpotTrainingOperator:
        args: dict[str, Any] = dict(task_id="train", checkpoint_prefix=prefix, poll_interval=POLL,
                                    progress_log_interval=60, max_preemptions=1)
        args.update(kwargs)
        return SpotTrainingOperator(backend=self.backend(training, **(backend_options or {})), **args)

    def env_option(self, extra: dict[str, str]) -> dict[str, Any]:
        """Backend options adding ``extra`` to the training's environment (``env=``, or SageMaker's
        ``environment=``), over what the cloud already passes."""
        name = "environment" if self.name == "sagemaker" else "env"
        return {name: {**getattr(self.backend(Training()), name), **extra}}

    def outage_policy(self, max_preemptions: int | None = 1) -> ThresholdPolicy:
        """The default rule, waiting one second between two tries for spot capacity."""
        return ThresholdPolicy(max_preemptions=max_preemptions, wait_seconds=1.0)

    # -- faults ------------------------------------------------------------------------
    def reclaim(self, attempt: int, when: str | None = None, *, notice: bool = True,
                at_shutdown: bool = False) -> None:
        self.fleet.reclaim(attempt, when, notice=notice, at_shutdown=at_shutdown)

    def take(self, counter: str) -> bool:
        """Consume one unit of a fault counter (``throttle_launches``, ...); whether one was left."""
        with self._lock:
            left = getattr(self, counter)
            if left > 0:
                setattr(self, counter, left - 1)
                return True
        return False

    def hold_launch(self) -> None:
        """Called inside the cloud's launch call: blocks while a test holds the gate."""
        if self.launch_gate is not None:
            self.launch_blocked.set()
            self.launch_gate.wait(60)

    @contextlib.contextmanager
    def launches_blocked(self, run: TaskRun) -> Iterator[threading.Event]:
        """Block the cloud's launch call until the yielded event is set."""
        self.launch_gate = threading.Event()
        try:
            yield self.launch_gate
        finally:
            self.launch_gate.set()
            self.launch_gate = None

    def pools(self) -> list[str]:
        """The names a clear "no capacity" failure must mention."""
        return []

    def spot_outage(self) -> None:
        """No spot capacity for the next spot launch (every pool), then spot is back."""
        self.spot_outage_launches = max(1, len(self.pools()))

    # -- what a test reads -------------------------------------------------------------
    def logs(self) -> list[str]:
        return self.fleet.logs()

    def live_processes(self) -> int:
        return len(self.fleet.alive())

    @abstractmethod
    def live_resources(self) -> int:
        """Instances, VMs or jobs the cloud still runs (or starts)."""

    def max_concurrent(self) -> int:
        return self.fleet.max_concurrent()

    def write(self, prefix: str, relative: str, data: bytes) -> None:
        """Put an object under a checkpoint prefix, as another writer would."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(f"{prefix.rstrip('/')}/{relative}", **self.storage_options())
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)

    def storage_options(self) -> dict[str, Any]:
        return {}

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until nothing runs any more (machines end in their own time)."""
        wait_until(lambda: self.live_processes() == 0 and self.live_resources() == 0, timeout,
                   f"{self.name}: every machine ending")

    def close(self) -> None:
        self.fleet.kill_all()


# =========================================================================================
# local
# =========================================================================================
class _LocalAttempt:
    """An attempt directory of the local backend, seen as a machine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.attempt = int(path.name.rsplit("-", 1)[1])
        self.log_path = path / "training.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def launch(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "launch.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}


class LocalCloud(Cloud):
    name = "local"

    def __init__(self, root: Path, imds: FakeIMDS) -> None:
        super().__init__(root, imds)
        self.state_dir = root / "local-state"
        self.spot_outage_seconds = 0.0
        self._stop = threading.Event()
        self.fleet.spawn(self._watch)

    def backend(self, training: Training, **options: Any) -> Any:
        from airflow_spot_training.backends.local import LocalBackend, trace_preemptions

        command = training.argv()
        if 1 in self.fail_to_start:
            command = ["/nonexistent/spot-training-python", *command[1:]]
        preemptions = None
        if self.spot_outage_seconds:
            trace = self.root / "outage-trace.json"
            trace.write_text(json.dumps({"data": [0] + [1] * 3600}))  # no spot for the first sample
            preemptions = trace_preemptions(str(trace), seconds_per_sample=self.spot_outage_seconds)
        args: dict[str, Any] = dict(
            env={"SPOT_TRAINING_IMDS_URL": self.imds.base_url(None),
                 "SPOT_TRAINING_NOTICE_POLL_SECONDS": str(NOTICE_POLL)},
            preemptions=preemptions, notice_seconds=NOTICE_WINDOW, state_dir=str(self.state_dir),
            spot_price_per_hour=0.3, on_demand_price_per_hour=1.0,
        )
        args.update(options)
        return LocalBackend(command, **args)

    def attempts(self) -> list[_LocalAttempt]:
        return [_LocalAttempt(p) for p in sorted(self.state_dir.glob("*/attempt-*")) if p.is_dir()]

    # -- reclaims: the backend's own preempt-now hook -------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set() and not self.fleet.closed.is_set():
            for attempt in self.attempts():
                plan = self.fleet.due(attempt)  # type: ignore[arg-type]
                if plan is not None:
                    self._reclaim(attempt, plan.notice)
            time.sleep(TICK)

    def _reclaim(self, attempt: _LocalAttempt, notice: bool) -> None:
        from airflow_spot_training.backends.local import request_preemption

        if notice:
            request_preemption(attempt.path)
            return
        pid = attempt.status().get("pid")
        spec = json.loads((attempt.path / "spec.json").read_text())
        progress = progress_uri(spec["env"]["SPOT_TRAINING_CHECKPOINT_URI"], int(spec["env"]["SPOT_TRAINING_ATTEMPT"]))
        freeze_consistently(lambda: _signal(pid, signal.SIGSTOP), lambda: _signal(pid, signal.SIGCONT),
                            attempt.log, lambda: read_reported_step(progress, {}))
        request_preemption(attempt.path)
        wait_until(lambda: "notice_at" in (attempt.status().get("details") or {}), 30, "the supervisor's notice")
        _signal(pid, signal.SIGKILL)

    @contextlib.contextmanager
    def launches_blocked(self, run: TaskRun) -> Iterator[threading.Event]:
        """The local launch takes the attempt directory's lock first: hold it."""
        key = run_key(run.dag_id, run.run_id, run.task_id, run.map_index)
        attempt_dir = self.state_dir / key / "attempt-1"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        gate = threading.Event()
        with open(attempt_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.launch_blocked.set()
            releaser = threading.Thread(target=lambda: (gate.wait(60), fcntl.flock(lock, fcntl.LOCK_UN)),
                                        daemon=True)
            releaser.start()
            try:
                yield gate
            finally:
                gate.set()
                releaser.join(10)

    # -- reading -------------------------------------------------------------------------
    def logs(self) -> list[str]:
        return [a.log() for a in self.attempts()]

    def live_processes(self) -> int:
        from airflow_spot_training.backends.local import _alive

        count = 0
        for attempt in self.attempts():
            pids = [attempt.launch().get("supervisor_pid"), attempt.status().get("pid")]
            count += sum(1 for pid in pids if pid and _alive(int(pid)))
        return count

    def live_resources(self) -> int:
        from airflow_spot_training.backends.local import _alive

        return sum(1 for a in self.attempts() if a.status().get("state") in (None, "running", "pending")
                   and a.launch() and _alive(int(a.launch()["supervisor_pid"])))

    def max_concurrent(self) -> int:
        spans = []
        for attempt in self.attempts():
            status = attempt.status()
            if status.get("started_at"):
                spans.append((status["started_at"], status.get("ended_at") or time.time()))
        return _peak(spans)

    def recorded_calls(self) -> Calls:
        calls = Calls()
        for attempt in self.attempts():
            launch = attempt.launch()
            if launch:
                calls.launches.append(launch.get("capacity", "?"))
            if attempt.status().get("state") == "stopped":
                calls.stops.append(attempt.path.name)
        return calls

    def pools(self) -> list[str]:
        return ["local"]

    def spot_outage(self) -> None:
        """The backend's own trace schedule: no spot for the first half second of the run."""
        self.spot_outage_seconds = 0.5

    def close(self) -> None:
        self._stop.set()
        self.fleet.closed.set()
        for attempt in self.attempts():
            for pid in (attempt.status().get("pid"), attempt.launch().get("supervisor_pid")):
                _signal(pid, signal.SIGCONT)
                _signal(pid, signal.SIGKILL)


def _signal(pid: Any, signum: int) -> None:
    if not pid:
        return
    try:
        os.kill(int(pid), signum)
    except (ProcessLookupError, PermissionError):
        pass


def _peak(spans: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    return peak


# =========================================================================================
# AWS: EC2 and SageMaker on moto
# =========================================================================================
class EC2Cloud(Cloud):
    name = "ec2"
    INSTANCE_TYPE = "c5.xlarge"

    def __init__(self, root: Path, imds: FakeIMDS, aws: dict[str, Any], monkeypatch: Any) -> None:
        from tests import aws_cloud

        super().__init__(root, imds)
        self.aws = aws
        self.network = _network()
        self.subnets = self.network["subnets"]
        self.consoles: dict[str, Any] = {}  # instance id -> what its machine printed so far
        self._install(monkeypatch)

    def prefix(self, tag: str = "run") -> str:
        return f"s3://{self.aws['bucket']}/conformance/{tag}"

    def storage_options(self) -> dict[str, Any]:
        return dict(self.aws["storage_options"])

    def backend(self, training: Training, **options: Any) -> Any:
        import shlex

        from airflow_spot_training.backends.ec2 import EC2SpotBackend

        args: dict[str, Any] = dict(image_id=self.network["image_id"], instance_types=[self.INSTANCE_TYPE],
                                    subnet_ids=self.subnets, on_demand_prices={self.INSTANCE_TYPE: 0.17},
                                    describe_interval=POLL)
        args.update(options)
        return EC2SpotBackend(shlex.join(training.argv()), **args)

    def pools(self) -> list[str]:
        return [f"{self.INSTANCE_TYPE}@{s}" for s in self.subnets]

    # -- moto hooks ----------------------------------------------------------------------
    def _install(self, monkeypatch: Any) -> None:
        from moto.ec2.exceptions import EC2ClientError
        from moto.ec2.models.instances import InstanceBackend
        from moto.ec2.responses.general import General

        cloud = self
        run, terminate = InstanceBackend.run_instances, InstanceBackend.terminate_instances
        by_ids = InstanceBackend.get_reservations_by_instance_ids

        def run_instances(backend: Any, image_id: str, count: int, user_data: Any, security_group_names: Any,
                          **kwargs: Any) -> Any:
            capacity = "spot" if kwargs.get("instance_market_options") else "on_demand"
            cloud.hold_launch()
            refusal = cloud._refusal(capacity)
            if refusal:
                cloud.calls.refused.append(f"{capacity}: {refusal[0]}")
                raise EC2ClientError(*refusal)
            reservation = run(backend, image_id, count, user_data, security_group_names, **kwargs)
            for instance in reservation.instances:
                cloud.calls.launches.append(capacity)
                cloud.fleet.spawn(cloud._machine, instance.id, _user_data_text(instance.user_data), capacity)
            return reservation

        def terminate_instances(backend: Any, instance_ids: list[str]) -> Any:
            cloud.calls.stops.extend(instance_ids)
            return terminate(backend, instance_ids)

        def describe_by_ids(backend: Any, *args: Any, **kwargs: Any) -> Any:
            if cloud.status_api_down:
                raise EC2ClientError("AuthFailure", "AWS was not able to validate the provided access credentials")
            if cloud.take("throttle_polls"):
                raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
            return by_ids(backend, *args, **kwargs)

        def get_console_output(response: Any) -> Any:  # what the machine printed, as EC2 keeps it
            from moto.core.responses import ActionResult
            from moto.core.utils import utcnow
            from moto.ec2.utils import Base64EncodedString

            instance = response.ec2_backend.get_instance(response._get_param("InstanceId"))
            console = cloud.consoles.get(instance.id)
            return ActionResult({"InstanceId": instance.id, "Timestamp": utcnow(),
                                 "Output": Base64EncodedString.from_raw_string(console() if console else "")})

        monkeypatch.setattr(General, "get_console_output", get_console_output)
        monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)
        monkeypatch.setattr(InstanceBackend, "terminate_instances", terminate_instances)
        monkeypatch.setattr(InstanceBackend, "get_reservations_by_instance_ids", describe_by_ids)

    def _refusal(self, capacity: str) -> tuple[str, str] | None:
        if self.take("throttle_launches"):
            return "RequestLimitExceeded", "Request limit exceeded."
        if self.no_capacity_at_all or (capacity == "spot" and self.take("spot_outage_launches")):
            return "InsufficientInstanceCapacity", f"We currently do not have sufficient {self.INSTANCE_TYPE} capacity."
        return None

    # -- the machine ---------------------------------------------------------------------
    def _machine(self, instance_id: str, script: str, capacity: str) -> None:
        from tests import aws_cloud

        attempt = int(re.search(r"SPOT_TRAINING_ATTEMPT=(\d+)", script).group(1))  # type: ignore[union-attr]
        home = self.root / "ec2" / instance_id
        home.mkdir(parents=True, exist_ok=True)
        if attempt in self.fail_to_start:  # the bootstrap failed before its result record
            aws_cloud.shut_down_instance(instance_id)
            return
        (home / "user-data.sh").write_text(script)
        self.starts_released.wait(60)
        shutdown = home / "shutdown"
        env = machine_env({
            "SPOT_TRAINING_IMDS_URL": self.imds.base_url(instance_id),
            "SPOT_TRAINING_SHUTDOWN_COMMAND": f"touch {shutdown}",
            "SPOT_TRAINING_LOG_FILE": str(home / "training.log"),
        })
        prefix = shlex.split(re.search(r"^export SPOT_TRAINING_CHECKPOINT_URI=(.*)$", script, re.M).group(1))[0]  # type: ignore[union-attr]
        process = self.fleet.start(instance_id, attempt, capacity, ["bash", str(home / "user-data.sh")], env,
                                   log_path=home / "training.log", cwd=home,
                                   progress_uri=progress_uri(prefix, attempt), storage_options=self.storage_options())
        self.consoles[instance_id] = process.console
        try:
            self._watch_instance(instance_id, process, shutdown)
        finally:
            if process.alive():
                process.end(grace=2)

    def _watch_instance(self, instance_id: str, process: MachineProcess, shutdown: Path) -> None:
        from tests import aws_cloud

        hard_kill_at: float | None = None
        while not self.fleet.closed.is_set():
            if aws_cloud.moto_instance(instance_id).state in ("shutting-down", "terminated", "stopped"):
                return  # terminated through the API: the machine goes down
            if not process.alive():
                if shutdown.exists():
                    if self.fleet.at_shutdown(process.attempt):
                        self.imds.notice(instance_id)
                        aws_cloud.reclaim_instance(instance_id)
                    else:
                        aws_cloud.shut_down_instance(instance_id)
                return
            if hard_kill_at is not None and time.time() >= hard_kill_at:
                process.freeze_and_kill()
                aws_cloud.reclaim_instance(instance_id)
                return
            plan = self.fleet.due(process)
            if plan is not None:
                self.imds.notice(instance_id)
                if not plan.notice:
                    process.freeze_and_kill()
                    aws_cloud.reclaim_instance(instance_id)
                    return
                hard_kill_at = time.time() + NOTICE_WINDOW
            time.sleep(TICK)

    def live_resources(self) -> int:
        from tests import aws_cloud

        return sum(1 for i in aws_cloud.all_instances() if i.state in ("pending", "running"))

    def recorded_calls(self) -> Calls:
        return self.calls


_IMAGE_ID: list[str] = []


def _network() -> dict[str, Any]:
    """A VPC with two subnets in two AZs, and an AMI moto knows (looked up once: it is slow)."""
    import boto3

    from tests.aws_cloud import REGION

    ec2 = boto3.client("ec2", region_name=REGION)
    if not _IMAGE_ID:
        _IMAGE_ID.append(ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"])
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{zone}")["Subnet"]["SubnetId"]
               for i, zone in enumerate("ab")]
    return {"vpc": vpc, "subnets": subnets, "image_id": _IMAGE_ID[0]}


def _user_data_text(user_data: Any) -> str:
    import base64

    if user_data is None:
        return ""
    if hasattr(user_data, "decode") and not isinstance(user_data, (bytes, str)):
        return user_data.decode()
    if isinstance(user_data, list):
        user_data = user_data[0]
    raw = user_data.encode() if isinstance(user_data, str) else user_data
    return base64.b64decode(raw).decode()


class SageMakerCloud(Cloud):
    name = "sagemaker"

    def __init__(self, root: Path, imds: FakeIMDS, aws: dict[str, Any], monkeypatch: Any) -> None:
        from tests import aws_cloud

        super().__init__(root, imds)
        self.aws = aws
        self.jobs = aws_cloud.SageMakerCloud(monkeypatch)
        self.specs: dict[str, dict[str, Any]] = {}
        self.describes: dict[str, int] = {}
        self.stop_requested: set[str] = set()
        self.restart_after: dict[str, int] = {}
        self._install(monkeypatch)

    def prefix(self, tag: str = "run") -> str:
        return f"s3://{self.aws['bucket']}/conformance/{tag}"

    def storage_options(self) -> dict[str, Any]:
        return dict(self.aws["storage_options"])

    def backend(self, training: Training, **options: Any) -> Any:
        from airflow_spot_training.backends.sagemaker import SageMakerSpotBackend

        argv = training.argv()
        args: dict[str, Any] = dict(image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
                                    role_arn="arn:aws:iam::123456789012:role/SageMakerTraining",
                                    instance_type="ml.m5.xlarge", command=argv[:1], arguments=argv[1:],
                                    environment={"SPOT_TRAINING_IMDS_URL": self.imds.base_url(None)},
                                    on_demand_price_per_hour=0.23)
        args.update(options)
        return SageMakerSpotBackend(**args)

    def pools(self) -> list[str]:
        return ["ml.m5.xlarge"]

    def spot_outage(self) -> None:
        self.spot_outage_launches = 1  # one job, which never gets capacity (MaxWaitTimeExceeded)

    # -- moto hooks ----------------------------------------------------------------------
    def _install(self, monkeypatch: Any) -> None:
        from moto.sagemaker import models, responses
        from moto.sagemaker.exceptions import SagemakerClientError

        cloud = self
        capture = responses.SageMakerResponse.create_training_job
        create = models.SageMakerModelBackend.create_training_job
        describe = models.SageMakerModelBackend.describe_training_job
        stop = models.SageMakerModelBackend.stop_training_job

        class Refused(SagemakerClientError):
            def __init__(self, code: str, message: str) -> None:
                self.code = code
                super().__init__(message)

        def create_response(response: Any) -> Any:
            name = response._get_param("TrainingJobName")
            cloud.specs[name] = {key: response._get_param(key) for key in (
                "AlgorithmSpecification", "Environment", "CheckpointConfig", "EnableManagedSpotTraining")}
            return capture(response)

        def create_training_job(backend: Any, **kwargs: Any) -> Any:
            capacity = "spot" if kwargs.get("enable_managed_spot_training") else "on_demand"
            cloud.hold_launch()
            if cloud.take("throttle_launches"):
                cloud.calls.refused.append(f"{capacity}: ThrottlingException")
                raise Refused("ThrottlingException", "Rate exceeded")
            job = create(backend, **kwargs)
            cloud.calls.launches.append(capacity)
            cloud.fleet.spawn(cloud._machine, job.training_job_name, capacity)
            return job

        def describe_training_job(backend: Any, training_job_name: str) -> Any:
            if cloud.status_api_down:
                raise Refused("UnrecognizedClientException", "The security token included in the request is invalid.")
            if cloud.take("throttle_polls"):
                raise Refused("ThrottlingException", "Rate exceeded")
            with cloud._lock:
                cloud.describes[training_job_name] = cloud.describes.get(training_job_name, 0) + 1
            return describe(backend, training_job_name)

        def stop_training_job(backend: Any, training_job_name: str) -> None:
            cloud.calls.stops.append(training_job_name)
            cloud.stop_requested.add(training_job_name)
            stop(backend, training_job_name)

        monkeypatch.setattr(responses.SageMakerResponse, "create_training_job", create_response)
        monkeypatch.setattr(models.SageMakerModelBackend, "create_training_job", create_training_job)
        monkeypatch.setattr(models.SageMakerModelBackend, "describe_training_job", describe_training_job)
        monkeypatch.setattr(models.SageMakerModelBackend, "stop_training_job", stop_training_job)

    # -- the machine ---------------------------------------------------------------------
    def _machine(self, name: str, capacity: str) -> None:
        spec = self.specs[name]
        env = dict(spec.get("Environment") or {})
        attempt = int(env.get("SPOT_TRAINING_ATTEMPT", "0"))
        if self._never_starts(name, attempt, capacity):
            return
        algorithm = spec["AlgorithmSpecification"]
        argv = list(algorithm.get("ContainerEntrypoint") or []) + list(algorithm.get("ContainerArguments") or [])
        s3_uri = spec["CheckpointConfig"]["S3Uri"]
        self.starts_released.wait(60)
        run = 0
        while True:
            run += 1
            local = self.root / "sagemaker" / name / f"run-{run}" / "checkpoints"
            sync = CheckpointSync(s3_uri, local, self.storage_options())
            sync.restore()
            process = self.fleet.start(f"{name}-run{run}", attempt, capacity, argv,
                                       machine_env({**env, "SPOT_TRAINING_CHECKPOINT_URI": str(local)}),
                                       cwd=local.parent, progress_uri=progress_uri(str(local), attempt))
            ending = self._watch_job(name, process, sync)
            if ending != "interrupted" or not self._restart_in_place(name):
                return

    def _never_starts(self, name: str, attempt: int, capacity: str) -> bool:
        """A job whose container cannot start, or that gets no capacity: ended here, no process."""
        if attempt in self.fail_to_start:
            self._end(name, "Failed", "CannotStartContainerError: the container could not start")
            return True
        if self.no_capacity_at_all or (capacity == "spot" and self.take("spot_outage_launches")):
            self._no_capacity(name, capacity)
            return True
        return False

    def _watch_job(self, name: str, process: MachineProcess, sync: CheckpointSync) -> str:
        kill_at: float | None = None
        while not self.fleet.closed.is_set():
            sync.upload()
            if name in self.stop_requested:
                process.end(grace=NOTICE_WINDOW)
                sync.upload()
                return "stopped"
            if not process.alive():
                sync.upload()
                self._ship_output(name, process)
                if kill_at is not None:
                    self.jobs.interrupt(name)
                    return "interrupted"
                code = process.popen.returncode
                if code == 0:
                    seconds = max(1, int(time.time() - process.started_at))
                    self.jobs.complete(name, training_seconds=seconds, billable_seconds=max(1, seconds // 3))
                else:
                    self._end(name, "Failed", f"AlgorithmError: the training exited with code {code}")
                return "ended"
            if kill_at is not None and time.time() >= kill_at:
                process.freeze_and_kill()
                continue
            plan = self.fleet.due(process)
            if plan is not None:
                if plan.notice:
                    process.signal_group(signal.SIGTERM)
                    kill_at = time.time() + NOTICE_WINDOW
                else:
                    process.freeze_and_kill()
                    kill_at = time.time()
            time.sleep(TICK)
        return "closed"

    def _ship_output(self, name: str, process: MachineProcess) -> None:
        """What SageMaker does with a container's output: a CloudWatch stream per instance and run."""
        import boto3

        from tests.aws_cloud import REGION

        logs = boto3.client("logs", region_name=REGION)
        group, stream = "/aws/sagemaker/TrainingJobs", f"{name}/algo-1-{int(process.started_at)}"
        for create in (lambda: logs.create_log_group(logGroupName=group),
                       lambda: logs.create_log_stream(logGroupName=group, logStreamName=stream)):
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                create()
        lines = [line for line in process.console().splitlines() if line.strip()]
        if lines:
            now = int(time.time() * 1000)
            logs.put_log_events(logGroupName=group, logStreamName=stream,
                                logEvents=[{"timestamp": now, "message": line} for line in lines])

    def _restart_in_place(self, name: str) -> bool:
        """SageMaker restarts an interrupted spot job once capacity is back: here, once the
        job is looked at again after the look that saw the interruption (or never, if stopped)."""
        with self._lock:
            wanted = self.describes.get(name, 0) + 2
        while name not in self.stop_requested and not self.fleet.closed.is_set():
            with self._lock:
                if self.describes.get(name, 0) >= wanted:
                    return True
            time.sleep(TICK)
        return False

    def _no_capacity(self, name: str, capacity: str) -> None:
        if capacity == "spot":
            self.jobs.max_wait_exceeded(name)
        else:
            self._end(name, "Failed", "CapacityError: Unable to provision requested ML compute capacity.")

    def _end(self, name: str, status: str, reason: str) -> None:
        from tests.aws_cloud import _now, _transition

        job = self.jobs.job(name)
        job.training_job_status, job.secondary_status = status, status
        job.failure_reason = reason
        job.training_end_time = _now()
        _transition(job, status, reason)

    def live_resources(self) -> int:
        return sum(1 for job in self.jobs.jobs().values() if job.training_job_status in ("InProgress", "Stopping"))

    def recorded_calls(self) -> Calls:
        return self.calls


class CheckpointSync:
    """SageMaker's checkpoint behaviour: ``S3Uri`` restored into ``LocalPath``, synced back.

    Files of a step are uploaded before its ``COMMIT.json``, so a reader of the S3 prefix
    never trusts a step whose payload is not there yet.
    """

    def __init__(self, s3_uri: str, local: Path, storage_options: dict[str, Any]) -> None:
        import s3fs

        self.fs = s3fs.S3FileSystem(**storage_options)
        self.remote = s3_uri.split("://", 1)[1].rstrip("/")
        self.local = local
        self.uploaded: dict[str, tuple[int, int]] = {}

    def restore(self) -> None:
        self.local.mkdir(parents=True, exist_ok=True)
        try:
            names = self.fs.find(self.remote)
        except FileNotFoundError:
            return
        for name in names:
            target = self.local / name[len(self.remote) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.fs.cat_file(name))
            stat = target.stat()
            self.uploaded[str(target)] = (stat.st_size, stat.st_mtime_ns)

    def upload(self) -> None:
        files = sorted((p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: (p.name == "COMMIT.json", str(p)))
        for path in files:
            try:
                stat = path.stat()
            except FileNotFoundError:  # retention removed it meanwhile
                continue
            if self.uploaded.get(str(path)) == (stat.st_size, stat.st_mtime_ns):
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            self.fs.pipe_file(f"{self.remote}/{path.relative_to(self.local)}", data)
            self.uploaded[str(path)] = (stat.st_size, stat.st_mtime_ns)


# =========================================================================================
# Google Cloud: Compute Engine and Vertex AI on loopback fakes
# =========================================================================================
class ComputeEngineCloud(Cloud):
    name = "compute_engine"
    ZONES = ["us-central1-a", "us-central1-b"]

    def __init__(self, root: Path, imds: FakeIMDS) -> None:
        from tests.fakes.gce_server import GCEServer

        super().__init__(root, imds)
        self.server = GCEServer()
        self.server.__enter__()
        self.fake = self.server.fake
        self.fake.on_insert = self._machine
        self.fake.before_request = self._before_request
        self.deleted_by_api: set[str] = set()
        self.logging = CloudLoggingServer().__enter__()  # the VMs' console output, as Cloud Logging keeps it

    def prefix(self, tag: str = "run") -> str:  # a file system every VM mounts (file://)
        return f"file://{self.root / 'checkpoints' / tag}"

    def backend(self, training: Training, **options: Any) -> Any:
        import shlex

        from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend

        args: dict[str, Any] = dict(zones=self.ZONES, machine_type="n1-standard-4", command=shlex.join(training.argv()),
                                    project_id="test-project", emulator_host=self.server.endpoint,
                                    logging_emulator_host=self.logging.endpoint,
                                    service_account="trainer@test-project.iam.gserviceaccount.com",
                                    env={"SPOT_TRAINING_IMDS_URL": self.imds.base_url(None)},
                                    spot_price_per_hour=0.05, on_demand_price_per_hour=0.19)
        args.update(options)
        return ComputeEngineSpotBackend(**args)

    def pools(self) -> list[str]:
        return list(self.ZONES)

    # -- the API's answers ---------------------------------------------------------------
    def _before_request(self, request: Any) -> tuple[int, Any] | None:
        if request.path.startswith(("/vm/", "/computeMetadata/", "/upload/")):
            return None
        if self.fake.from_vm(request):
            return self._from_vm(request)
        if request.method == "POST" and request.path.endswith("/instances"):
            return self._insert(request)
        if request.method == "GET" and "/instances/" in request.path:
            return self._read_instance()
        if request.method == "DELETE":
            name = request.path.rsplit("/", 1)[1]
            self.calls.stops.append(name)
            self.deleted_by_api.add(name)
        return None

    #: inserts after which the fake stops playing along: a relaunch loop that never defers would
    #: otherwise recurse until Python's RecursionError, which corrupts the test process
    MAX_INSERTS = 24

    def _insert(self, request: Any) -> tuple[int, Any] | None:
        from tests.fakes.gce_server import _error

        if len(self.fake.inserts()) >= self.MAX_INSERTS:
            return 403, _error(403, f"conformance harness: more than {self.MAX_INSERTS} inserts in one test, "
                                    "an unbounded relaunch loop", "forbidden")
        self.hold_launch()
        if self.take("throttle_launches"):
            self.calls.refused.append("insert: 429")
            return 429, _error(429, "Rate Limit Exceeded", "rateLimitExceeded")
        spot = (request.body.get("scheduling") or {}).get("provisioningModel") == "SPOT"
        if self.no_capacity_at_all or (spot and self.take("spot_outage_launches")):
            self.fake.exhausted_zones.update(self.ZONES)
        else:
            self.fake.exhausted_zones.clear()
        return None

    def _read_instance(self) -> tuple[int, Any] | None:
        from tests.fakes.gce_server import _error

        if self.status_api_down:
            return 401, _error(401, "Request had invalid authentication credentials.", "authError")
        if self.take("throttle_polls"):
            return 503, _error(503, "The service is currently unavailable.", "backendError")
        return None

    def _from_vm(self, request: Any) -> tuple[int, Any] | None:
        """The VM deletes itself at the end of its startup script; a plan may reclaim it first."""
        if request.method != "DELETE":
            return None
        name = request.path.rsplit("/", 1)[1]
        attempt = self._attempt_of(name)
        if attempt is not None and self.fleet.at_shutdown(attempt):
            self.fake.preempted_vms.add(name)
            self.fake.preempt(name)
            return 200, {"kind": "compute#operation", "name": "operation-preempted", "status": "DONE"}
        return None

    def _attempt_of(self, name: str) -> int | None:
        match = re.search(r"-a(\d+)$", name)
        return int(match.group(1)) if match else None

    # -- the machine ---------------------------------------------------------------------
    def _machine(self, zone: str, instance: dict[str, Any]) -> None:
        name = instance["name"]
        items = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
        env = json.loads(items["spot-training-env"])
        attempt, capacity = int(env["SPOT_TRAINING_ATTEMPT"]), env["SPOT_TRAINING_CAPACITY"]
        home = self.root / "gce" / name
        home.mkdir(parents=True, exist_ok=True)
        if attempt in self.fail_to_start:  # the guest crashed before the startup script ran
            with self.fake.lock:
                self.fake.instances[(zone, name)]["status"] = "TERMINATED"
            return
        (home / "startup.sh").write_text(items["startup-script"])
        self.starts_released.wait(60)
        if not self._exists(zone, name):
            return
        process = self.fleet.start(name, attempt, capacity, ["bash", str(home / "startup.sh")], machine_env({
            "SPOT_TRAINING_METADATA_URL": f"{self.server.endpoint}/vm/{name}",
            "SPOT_TRAINING_STORAGE_URL": self.server.endpoint,
            "SPOT_TRAINING_COMPUTE_URL": self.server.endpoint,
        }), cwd=home, progress_uri=progress_uri(env["SPOT_TRAINING_CHECKPOINT_URI"], attempt))
        self.logging.fake.register("gce_instance", name, process.console)
        try:
            self._watch_vm(zone, name, process)
        finally:
            if process.alive():
                process.end(grace=2)

    def _exists(self, zone: str, name: str) -> bool:
        with self.fake.lock:
            return (zone, name) in self.fake.instances

    def _watch_vm(self, zone: str, name: str, process: MachineProcess) -> None:
        kill_at: float | None = None
        while not self.fleet.closed.is_set():
            if not self._exists(zone, name):
                return  # deleted (by itself, by the API, or preempted): the VM goes down
            if not process.alive():
                if kill_at is not None:
                    self.fake.preempt(name)
                return
            if kill_at is not None and time.time() >= kill_at:
                process.freeze_and_kill()
                continue
            plan = self.fleet.due(process)
            if plan is not None:
                self.fake.preempted_vms.add(name)
                if plan.notice:
                    os.kill(process.pid, signal.SIGTERM)  # the shutdown the startup script forwards
                    kill_at = time.time() + NOTICE_WINDOW
                else:
                    process.freeze_and_kill()
                    self.fake.preempt(name)
                    return
            time.sleep(TICK)

    def live_resources(self) -> int:
        with self.fake.lock:
            return sum(1 for i in self.fake.instances.values() if i["status"] in ("PROVISIONING", "STAGING", "RUNNING"))

    def recorded_calls(self) -> Calls:
        calls = Calls(refused=list(self.calls.refused), stops=list(self.calls.stops))
        for op in list(self.fake.operations.values()):
            if op["operationType"] == "insert" and not op.get("error"):
                body = next(r.body for r in self.fake.inserts() if r.body.get("name") == op["targetLink"].rsplit("/", 1)[1])
                model = (body.get("scheduling") or {}).get("provisioningModel")
                calls.launches.append("spot" if model == "SPOT" else "on_demand")
            elif op["operationType"] == "insert":
                calls.refused.append("insert: ZONE_RESOURCE_POOL_EXHAUSTED")
        return calls

    def close(self) -> None:
        super().close()
        self.server.__exit__()
        self.logging.__exit__()


class VertexAICloud(Cloud):
    name = "vertex_ai"

    def __init__(self, root: Path, imds: FakeIMDS) -> None:
        from tests.fakes.vertex_server import VertexServer

        super().__init__(root, imds)
        self.server = VertexServer()
        self.server.__enter__()
        self.fake = self.server.fake
        self.fake.on_create = self._machine
        self.fake.before_call = self._before_call
        self.logging = CloudLoggingServer().__enter__()  # the jobs' output, as Cloud Logging keeps it

    def prefix(self, tag: str = "run") -> str:  # a file system the jobs mount (file://), as /gcs/ is
        return f"file://{self.root / 'vertex' / tag / 'checkpoints'}"

    def backend(self, training: Training, **options: Any) -> Any:
        from airflow_spot_training.backends.vertex_ai import VertexAISpotBackend

        argv = training.argv()
        args: dict[str, Any] = dict(region="us-central1", machine_type="n1-standard-4",
                                    image_uri="us-docker.pkg.dev/p/train/t:1", command=argv[:1], args=argv[1:],
                                    project_id="test-project", emulator_host=self.server.endpoint,
                                    logging_emulator_host=self.logging.endpoint,
                                    env={"SPOT_TRAINING_IMDS_URL": self.imds.base_url(None)},
                                    spot_price_per_hour=0.1, on_demand_price_per_hour=0.38)
        args.update(options)
        return VertexAISpotBackend(**args)

    def pools(self) -> list[str]:
        return ["us-central1"]

    def spot_outage(self) -> None:
        self.spot_outage_launches = 1  # one job, failed by a spot stockout before it started

    def _before_call(self, method: str, request: Any, context: Any) -> None:
        import grpc

        if method == "CreateCustomJob":
            self.hold_launch()
            if self.take("throttle_launches"):
                self.calls.refused.append("CreateCustomJob: RESOURCE_EXHAUSTED")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "Rate exceeded: too many requests for aiplatform.googleapis.com/custom_job_requests")
        if method == "GetCustomJob":
            if self.status_api_down:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "Request had invalid authentication credentials.")
            if self.take("throttle_polls"):
                context.abort(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
        if method == "CancelCustomJob":
            self.calls.stops.append(request.name)

    def _machine(self, job: Any) -> None:
        from google.cloud.aiplatform_v1.types import custom_job as cj

        spec = job.job_spec.worker_pool_specs[0].container_spec
        env = {e.name: e.value for e in spec.env}
        env["AIP_CHECKPOINT_DIR"] = job.job_spec.base_output_directory.output_uri_prefix + "/checkpoints/"
        attempt, capacity = int(env["SPOT_TRAINING_ATTEMPT"]), env["SPOT_TRAINING_CAPACITY"]
        spot = job.job_spec.scheduling.strategy == cj.Scheduling.Strategy.SPOT
        self.calls.launches.append("spot" if spot else "on_demand")
        if attempt in self.fail_to_start:
            self.fake.fail(job.name, 3, "The replica workerpool0-0 exited with a non-zero status of 127.")
            return
        if self.no_capacity_at_all or (spot and self.take("spot_outage_launches")):
            self.fake.fail(job.name, 8, "STOCKOUT: resources are not available in us-central1 right now")
            return
        self.starts_released.wait(60)
        if self._state(job.name) != "JOB_STATE_PENDING":
            return  # cancelled while it waited for its machine
        self.fake.start(job.name)
        process = self.fleet.start(job.name.rsplit("/", 1)[1], attempt, capacity, [*spec.command, *spec.args],
                                   machine_env(env), progress_uri=progress_uri(env["SPOT_TRAINING_CHECKPOINT_URI"], attempt))
        self.logging.fake.register("ml_job", job.name.rsplit("/", 1)[1], process.console)
        try:
            self._watch_job(job.name, process)
        finally:
            if process.alive():
                process.end(grace=2)

    def _state(self, name: str) -> str:
        with self.fake.lock:
            return self.fake.jobs[name].state.name

    def _watch_job(self, name: str, process: MachineProcess) -> None:
        kill_at: float | None = None
        while not self.fleet.closed.is_set():
            if self._state(name) in ("JOB_STATE_CANCELLED", "JOB_STATE_CANCELLING"):
                return
            if not process.alive():
                if kill_at is not None:
                    self.fake.preempt(name)
                elif process.popen.returncode == 0:
                    self.fake.succeed(name)
                else:
                    self.fake.fail(name, 3, f"The replica workerpool0-0 exited with a non-zero status of "
                                            f"{process.popen.returncode}.")
                return
            if kill_at is not None and time.time() >= kill_at:
                process.freeze_and_kill()
                continue
            plan = self.fleet.due(process)
            if plan is not None:
                if plan.notice:
                    process.signal_group(signal.SIGTERM)
                    kill_at = time.time() + NOTICE_WINDOW
                else:
                    process.freeze_and_kill()
                    kill_at = time.time()
            time.sleep(TICK)

    def live_resources(self) -> int:
        final = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")
        with self.fake.lock:
            return sum(1 for job in self.fake.jobs.values() if job.state.name not in final)

    def recorded_calls(self) -> Calls:
        return self.calls

    def close(self) -> None:
        super().close()
        self.server.__exit__()
        self.logging.__exit__()


BACKENDS = ["local", "ec2", "sagemaker", "compute_engine", "vertex_ai"]
