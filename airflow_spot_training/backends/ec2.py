"""The EC2 backend: one instance per attempt, on spot or on-demand capacity.

Launch
    ``RunInstances`` from a launch template or explicit parameters. Spot through
    ``InstanceMarketOptions`` (one-time, terminate on interruption, no ``MaxPrice``);
    on-demand after escalation. Pools (instance type x subnet / AZ) are tried in
    order: a capacity error (``InsufficientInstanceCapacity``, a ``capacity-not-available``
    spot request, ...) moves on to the next pool; when every pool fails on spot,
    :class:`SpotCapacityUnavailable` lets the escalation policy wait or escalate.
    Quota and permission errors raise :class:`CloudActionRequired` naming what to raise
    or grant.

Idempotency
    Every instance is tagged with the task's ids, the run key, the attempt and its
    token. ``launch`` first looks for an instance carrying the attempt's token (live
    or ended) and returns it; otherwise ``RunInstances`` runs with a ``ClientToken``
    derived from the attempt token and the pool, so a repeated call never creates a
    second instance.

Bootstrap
    The instance runs ``airflow_spot_training/bootstrap/ec2_user_data.sh``, rendered
    with the environment contract: it runs the command or container, writes the
    result record under the checkpoint prefix and shuts the instance down, which
    terminates it (``InstanceInitiatedShutdownBehavior=terminate``).

Detection (:meth:`EC2SpotBackend.poll`, in the triggerer)
    ``Server.SpotInstanceTermination`` / ``Server.SpotInstanceShutdown`` and the spot
    request interruption codes are preemptions; ``Client.InstanceInitiatedShutdown`` is
    completion, success or failure read from the result record; anything else is a
    failure with its reason. All triggers of one triggerer share one
    ``DescribeInstances`` call per region and interval (:mod:`.ec2_batching`). The
    trigger fires on what that call shows; the result record and the spot request
    are read by the worker (:meth:`EC2SpotBackend.settle`) before the attempt is recorded.

Logs
    The bootstrap copies the last lines of the training's output to the instance's console
    before it shuts down; with ``log_group`` a shipper also sends the whole output to a
    CloudWatch Logs stream per attempt (:mod:`~airflow_spot_training.bootstrap.cloudwatch_logs`).
    :meth:`EC2SpotBackend.training_log` reads a failed attempt's last lines from there.

Gangs (``num_nodes`` > 1)
    All or nothing: rank 0 is launched first (its private address is every node's
    rendezvous), then ranks 1 .. N-1 in the same pool, each with its own ``ClientToken``
    and user data (its rank, rank 0's address), all tagged with the attempt's token and
    their rank. A pool that cannot hold the whole gang (a capacity error, an unfulfilled
    spot request, for any rank) has what was launched terminated and counts as no
    capacity: the next pool is tried, then the policy waits or escalates. One instance
    reclaimed ends the attempt as one preemption; the operator then terminates the rest.

Cost
    The spot price at launch comes from ``DescribeSpotPriceHistory``; the on-demand
    price from ``on_demand_prices`` or, when ``use_pricing_api`` is on, the Pricing API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import shlex
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from airflow_spot_training.backends.aws_connection import (
    S3StorageOptions,
    console_domain,
    error_code,
    error_message,
    make_hook,
)
from airflow_spot_training.backends.base import (
    CHECKPOINT_SYNC_DOC,
    AttemptHandle,
    AttemptLink,
    AttemptState,
    AttemptStatus,
    CapacityUnavailable,
    CheckpointSync,
    CloudActionRequired,
    LaunchRequest,
    TAIL_LINES,
    SpotBackend,
    TrainingLog,
    argument,
    check_env_names,
    combine_gang,
)
from airflow_spot_training.backends.ec2_batching import coordinator_for
from airflow_spot_training.bootstrap import render_ec2_user_data
from airflow_spot_training.core.contract import node_result_uri
from airflow_spot_training.core.epoch import epoch_seconds
from airflow_spot_training.core.folder_sync import ec2_user_data_command
from airflow_spot_training.core.pool_health import in_order
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.runtime.results import MalformedRecord, read_json_record

log = logging.getLogger(__name__)

TAG_PREFIX = "spot-training:"
TOKEN_TAG = f"{TAG_PREFIX}token"
RANK_TAG = f"{TAG_PREFIX}node-rank"
#: a gang's pool (its index in the ladder): where a gang cut short by a dying worker is completed
POOL_TAG = f"{TAG_PREFIX}gang-pool"

#: instance state reasons
PREEMPTION_REASONS = frozenset({"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"})
COMPLETION_REASON = "Client.InstanceInitiatedShutdown"
USER_SHUTDOWN_REASON = "Client.UserInitiatedShutdown"
CAPACITY_REASONS = frozenset({"Server.InsufficientInstanceCapacity"})
#: DescribeSpotInstanceRequests status codes
SPOT_INTERRUPTION_CODES = frozenset({
    "marked-for-termination", "marked-for-stop", "instance-terminated-by-price",
    "instance-terminated-no-capacity", "instance-terminated-capacity-oversubscribed",
    "instance-stopped-by-price", "instance-stopped-no-capacity", "instance-stopped-capacity-oversubscribed",
})
SPOT_CAPACITY_CODES = frozenset({"capacity-not-available", "capacity-oversubscribed", "price-too-low"})
#: RunInstances errors that move on to the next pool
CAPACITY_ERRORS = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "UnfulfillableCapacity",
    "SpotMaxPriceTooLow", "InsufficientFreeAddressesInSubnet",
})
ENDED_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
#: seconds during which an instance unknown to DescribeInstances is still taken as starting
CONSISTENCY_GRACE = 120.0
#: the console page of an instance (the Amazon provider's EC2InstanceLink format, any partition)
INSTANCE_CONSOLE = "https://console.{aws_domain}/ec2/home?region={region_name}#InstanceDetails:instanceId={instance_id}"
LOG_STREAM_CONSOLE = ("https://console.{aws_domain}/cloudwatch/home?region={region_name}#logsV2:log-groups/log-group/"
                      "{group}/log-events/{stream}")

SPOT_QUOTA = ("'All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests' (L-34B43A08), or the "
              "family's own spot quota (G and VT: L-3819A6DF, P: L-7212CCBC, Inf: L-B5D1601B)")
ON_DEMAND_QUOTA = ("'Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances' (L-1216C47A), or the "
                   "family's own on-demand quota (G and VT: L-DB2E81BA, P: L-417A185B)")

NonEmptyStrings = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


@dataclass(frozen=True, kw_only=True)
class EC2Handle(AttemptHandle):
    """One EC2 instance running one attempt."""

    instance_id: str
    region: str = ""
    partition: str = "aws"
    instance_type: str | None = None
    subnet_id: str | None = None
    availability_zone: str | None = None
    pools_tried: list[str] = dataclasses.field(default_factory=list)
    result_uri: str = ""
    spot_price: float | None = None
    on_demand_price: float | None = None
    #: a gang's instances, in rank order (``instance_id`` is rank 0's); empty for one node
    node_instance_ids: list[str] = dataclasses.field(default_factory=list)

    @property
    def instance_ids(self) -> list[str]:
        return list(self.node_instance_ids) or [self.instance_id]


class _PoolRefused(Exception):
    """A pool could not hold the attempt (or its whole gang): what it answered."""


class EC2SpotBackend(SpotBackend):
    """Run each attempt on its own EC2 instance, spot first, on-demand after escalation."""

    kind = "ec2"
    handle_type = EC2Handle
    default_restart_overhead = 180.0
    positional_argument = "command"
    link_labels = ("EC2 instance", "Logs")
    price_argument = "on_demand_prices"
    checkpoint_schemes = frozenset({"s3", "gs", "file"})
    supports_gangs = True
    poll_waits_for_next_status = True  # poll() waits for the next shared DescribeInstances

    command: str | list[str] = argument(
        doc="the training command run on the instance: a shell command line or a list of strings "
            "(with container_image: the container's arguments)", templated=True, example="true")
    image_id: str | None = argument(None, "the AMI; required unless launch_template names one", templated=True,
                                    example="ami-00000000000000000")
    instance_types: NonEmptyStrings | None = argument(
        None, "instance types to try, in order of preference, e.g. ['g5.xlarge', 'g4dn.xlarge']", templated=True,
        example=["m5.large"])
    subnet_ids: NonEmptyStrings | None = argument(None, "subnets (one per AZ you accept) to try for each instance type")
    pools: list[dict[str, str]] | None = argument(
        None, "an explicit capacity ladder instead of instance_types x subnet_ids: a list of "
              "{'instance_type': ..., 'subnet_id': ...} or {'instance_type': ..., 'availability_zone': ...}",
        templated=True, example=[{"instance_type": "m5.large", "subnet_id": "subnet-00000000"}])
    launch_template: dict[str, str] | None = argument(
        None, "{'LaunchTemplateId' | 'LaunchTemplateName': ..., 'Version': ...}; explicit arguments override it")
    container_image: str | None = argument(
        None, "run this image with docker run on the instance (the AMI must have Docker) instead of a host command",
        templated=True)
    env: dict[str, str] = argument(
        {}, "extra environment variables for the training; visible in the instance's user data, so pass "
            "secrets through secrets=", templated=True)
    secrets: dict[str, str] = argument(
        {}, "environment variables resolved on the instance from AWS Secrets Manager: "
            "{'HF_TOKEN': 'arn:aws:secretsmanager:...:secret:hf-token' or a secret name}")
    instance_profile: str | None = argument(
        None, "IAM instance profile name or ARN (the training needs S3 access to the checkpoint prefix)")
    security_group_ids: NonEmptyStrings | None = argument(None, "security groups of the instance")
    key_name: str | None = argument(None, "an EC2 key pair for SSH, if wanted")
    root_volume_gb: PositiveInt | None = argument(None, "size of the root volume (gp3) in GiB, if not the AMI's")
    root_device_name: str = argument("/dev/xvda", "the AMI's root device name (/dev/xvda on Amazon Linux)")
    tags: dict[str, str] = argument({}, "extra tags for the instance and its volumes")
    checkpoint_sync: CheckpointSync = argument(
        None, CHECKPOINT_SYNC_DOC + "; the folder is /mnt/checkpoint unless local_dir is set (the AMI needs "
              "python3 with airflow-spot-training[runtime] and s3fs)")
    log_group: str | None = argument(
        None, "a CloudWatch Logs group (it must exist) the bootstrap ships the training's output to, redacted, "
              "one stream per attempt named after its token (the AMI needs python3 with boto3 and "
              "airflow-spot-training; the instance profile logs:CreateLogStream and logs:PutLogEvents); "
              "without it the output is read from the instance's console output", min_length=1)
    user_data_template: str | None = argument(
        None, "a replacement for the shipped bootstrap template, with the same @@NAME@@ placeholders")
    on_demand_prices: dict[str, PositiveFloat] | PositiveFloat | None = argument(
        None, "on-demand USD per hour by instance type (or one number for all), for cost and savings")
    use_pricing_api: bool = argument(
        False, "look up on-demand prices missing from on_demand_prices in the AWS Pricing API "
               "(needs pricing:GetProducts)")
    aws_conn_id: str | None = argument("aws_default", "the Airflow AWS connection")
    region_name: str | None = argument(None, "the region; default: the connection's")
    botocore_config: dict[str, Any] | None = argument(
        None, "extra botocore Config arguments (retries default to standard mode, 10 attempts)")
    verify: bool | str | None = argument(
        None, "SSL certificate verification, as in the Amazon provider: False, or a CA bundle path")
    describe_interval: PositiveFloat | None = argument(
        None, "seconds between two shared DescribeInstances calls in the triggerer; default: the task's "
              "poll_interval")

    _hook: Any = None
    #: per node: the last description the shared call served and its status (see ``_apoll_node``)
    _last_seen: Any = None
    _price_cache: dict[str, float | None] = {}

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(check_env_names(value))

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("give the training command run on the instance, as a shell command line or a list "
                             "of strings (with container_image: the container's arguments).")
        return value

    @field_validator("launch_template")
    @classmethod
    def _template_named(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and not ({"LaunchTemplateId", "LaunchTemplateName"} & set(value)):
            raise ValueError("it must name the template: {'LaunchTemplateId': 'lt-...'} or "
                             "{'LaunchTemplateName': '...'} (and optionally 'Version').")
        return value

    @field_validator("pools")
    @classmethod
    def _pools(cls, value: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("it is empty: give at least one {'instance_type': ..., 'subnet_id': ...}.")
        for pool in value:
            unknown = set(pool) - {"instance_type", "subnet_id", "availability_zone"}
            if unknown or not pool.get("instance_type"):
                raise ValueError(
                    f"entry {pool!r}: each pool is {{'instance_type': 'g5.xlarge', 'subnet_id': 'subnet-...'}} or "
                    "{'instance_type': ..., 'availability_zone': 'us-east-1a'}."
                )
        return value

    @model_validator(mode="after")
    def _where_and_what(self) -> EC2SpotBackend:
        if not self.image_id and not self.launch_template:
            raise ValueError("give image_id='ami-...' or launch_template={'LaunchTemplateName': ...}.")
        if self.pools is not None and self.instance_types is not None:
            raise ValueError("give either pools=[...] or instance_types=[...] (with subnet_ids), not both.")
        if self.checkpoint_sync is not None and self.container_image:
            raise ValueError("checkpoint_sync runs the training under the folder-sync wrapper on the instance; with "
                             "container_image, run the wrapper inside your container instead (python -m "
                             "airflow_spot_training.runtime.folder_sync --dir /mnt/checkpoint -- <training>).")
        if not self.pools and not self.instance_types and not self.launch_template:
            raise ValueError(
                "give instance_types=['g5.xlarge', ...] (tried in order), or pools=[...], "
                "or a launch_template that sets the instance type."
            )
        return self

    def checkpoint_storage_options(self) -> dict[str, Any]:
        return S3StorageOptions(self.aws_conn_id, self.region_name, self.verify).get()

    def bind_poll_interval(self, seconds: float) -> None:
        if self.describe_interval is None:
            self.describe_interval = seconds

    # =====================================================================================
    # clients
    # =====================================================================================
    @property
    def hook(self) -> Any:
        if self._hook is None:
            self._hook = make_hook(self.aws_conn_id, self.region_name, "ec2", self.botocore_config, self.verify)
        return self._hook

    @property
    def client(self) -> Any:
        return self.hook.conn

    def _region(self) -> str:
        return str(self.hook.conn_region_name or self.hook.region_name or "")

    # =====================================================================================
    # pools
    # =====================================================================================
    def capacity_pools(self) -> list[dict[str, str]]:
        """The capacity ladder, in the order it is tried."""
        if self.pools:
            return [dict(p) for p in self.pools]
        types: list[str | None] = list(self.instance_types or [None])
        subnets: list[str | None] = list(self.subnet_ids or [None])
        out = []
        for instance_type in types:
            for subnet in subnets:
                pool: dict[str, str] = {}
                if instance_type:
                    pool["instance_type"] = instance_type
                if subnet:
                    pool["subnet_id"] = subnet
                out.append(pool)
        return out

    # =====================================================================================
    # launching
    # =====================================================================================
    def launch(self, request: LaunchRequest) -> EC2Handle:
        existing = self.find(request)
        if existing is not None:
            log.info("attempt %s already has instance %s; re-attaching", request.attempt, existing.instance_id)
            return existing
        tried: list[str] = []
        pools = self.capacity_pools()
        partial = self._partial_gang(request)  # a try that died launching the gang left these running
        # the ClientToken keeps each pool's configured index, whatever order pool health asks for
        ladder = in_order(list(enumerate(pools)), request.pool_order, lambda entry: _pool_label(entry[1]))
        for index, pool in _partial_pool_first(ladder, partial.get("pool")):
            label = _pool_label(pool)
            reuse = partial["nodes"] if partial.get("pool") == index else {}
            try:
                instances = self._launch_gang(request, pool, index, reuse)
            except _PoolRefused as refused:
                log.warning("pool %s: %s; trying the next pool", label, refused)
                tried.append(f"{label}: {refused}")
                continue
            return self._handle(request, pool, instances[0], tried,
                                [i["InstanceId"] for i in instances] if len(instances) > 1 else [])
        what = "spot" if request.capacity is Capacity.SPOT else "on-demand"
        raise CapacityUnavailable(
            f"no {what} capacity in any of {len(pools)} pool(s): {'; '.join(tried)}. More instance types, or "
            "subnets in other availability zones (instance_types / subnet_ids / pools), widen the search.",
            pools_tried=tried, capacity=request.capacity, pools_without_capacity=_tried_pools(tried),
        )

    def capacity_ladder(self) -> list[str]:
        return [_pool_label(pool) for pool in self.capacity_pools()]

    def pool_health_scope(self) -> str:
        return f"{self.kind}:{self.region_name or self.aws_conn_id or 'default'}"

    def pools_without_capacity(self, handle: AttemptHandle) -> list[str]:
        return _tried_pools(self._typed(handle).pools_tried)

    def _partial_gang(self, request: LaunchRequest) -> dict[str, Any]:
        """Live nodes of this attempt's gang left by a try that died while launching it: their pool and ranks.

        They are completed in their pool (the ranks that are missing launched there) rather than
        launched a second time; ``{}`` when there are none (or for a single node).
        """
        if request.num_nodes == 1:
            return {}
        response = self.client.describe_instances(Filters=[{"Name": f"tag:{TOKEN_TAG}", "Values": [request.token]}])
        nodes: dict[int, dict[str, Any]] = {}
        pools = set()
        for instance in (i for r in response.get("Reservations", []) for i in r.get("Instances", [])):
            tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags") or []}
            live = (instance.get("State") or {}).get("Name") not in ENDED_STATES
            if live and str(tags.get(RANK_TAG, "")).isdigit() and str(tags.get(POOL_TAG, "")).isdigit():
                nodes[int(tags[RANK_TAG])] = instance
                pools.add(int(tags[POOL_TAG]))
        return {"pool": pools.pop(), "nodes": nodes} if len(pools) == 1 else {}

    def _launch_gang(self, request: LaunchRequest, pool: dict[str, str], index: int,
                     reuse: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Every node of the attempt in one pool, rank 0 first; nothing left running if one cannot be had.

        ``reuse``: nodes already running in this pool (by rank), kept instead of launched again.
        """
        launched: list[dict[str, Any]] = []
        master_addr = ""
        try:
            for rank in range(request.num_nodes):
                instance = (reuse or {}).get(rank) or self._launch_node(request, pool, index, rank, master_addr)
                launched.append(instance)
                master_addr = master_addr or str(instance.get("PrivateIpAddress") or "")
        except BaseException:
            for instance in launched:  # all or nothing: release the part of the gang that was had
                self._terminate(instance["InstanceId"])
            raise
        return launched

    def _launch_node(self, request: LaunchRequest, pool: dict[str, str], index: int, rank: int,
                     master_addr: str) -> dict[str, Any]:
        of_gang = f" (node {rank} of {request.num_nodes}: the gang was released)" if request.num_nodes > 1 else ""
        try:
            instance = self._run_instance(request, pool, index, rank, master_addr)
        except Exception as e:
            code = error_code(e)
            if code in CAPACITY_ERRORS:
                raise _PoolRefused(f"{code}{of_gang}") from e
            raise self._action_required(e, request, pool) from e
        capacity_code = self._spot_request_capacity_code(instance)
        if capacity_code:
            self._terminate(instance["InstanceId"])
            raise _PoolRefused(f"{capacity_code}{of_gang}")
        return instance

    def _run_instance(self, request: LaunchRequest, pool: dict[str, str], index: int, rank: int = 0,
                      master_addr: str = "") -> dict[str, Any]:
        params = self.run_instances_params(request, pool, index, rank=rank, master_addr=master_addr)
        return self.client.run_instances(**params)["Instances"][0]

    def run_instances_params(self, request: LaunchRequest, pool: dict[str, str], index: int, *, rank: int = 0,
                             master_addr: str = "") -> dict[str, Any]:
        """The ``RunInstances`` arguments for one attempt (node ``rank`` of its gang) in one pool."""
        tags = [{"Key": k, "Value": v} for k, v in self._tags(request, rank, index).items()]
        params: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": f"{request.token}-p{index}" + (f"-n{rank}" if rank else ""),
            "UserData": self.user_data(request, rank, master_addr),
            "InstanceInitiatedShutdownBehavior": "terminate",
            # IMDSv2 only: the training's notice poller and the bootstrap use session tokens
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        params.update(self._optional_launch_params())
        params.update(_pool_params(pool))
        if request.capacity is Capacity.SPOT:
            # no MaxPrice: AWS advises against it, it only raises interruption rates
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return params

    def _optional_launch_params(self) -> dict[str, Any]:
        """The ``RunInstances`` arguments of the backend's optional settings, those that are set."""
        params: dict[str, Any] = {}
        if self.launch_template:
            params["LaunchTemplate"] = dict(self.launch_template)
        if self.image_id:
            params["ImageId"] = self.image_id
        if self.security_group_ids:
            params["SecurityGroupIds"] = list(self.security_group_ids)
        if self.instance_profile:
            key = "Arn" if self.instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: self.instance_profile}
        if self.key_name:
            params["KeyName"] = self.key_name
        if self.root_volume_gb:
            params["BlockDeviceMappings"] = [{
                "DeviceName": self.root_device_name,
                "Ebs": {"VolumeSize": self.root_volume_gb, "VolumeType": "gp3", "DeleteOnTermination": True},
            }]
        return params

    def user_data(self, request: LaunchRequest, rank: int = 0, master_addr: str = "") -> str:
        """The rendered bootstrap script for one attempt (node ``rank`` of its gang).

        Rank 0 meets its peers on itself (``127.0.0.1``); the others at rank 0's private address.
        """
        command = self.command if isinstance(self.command, str) else shlex.join(self.command or [])
        if self.checkpoint_sync is not None:
            command = ec2_user_data_command(self.checkpoint_sync, command)
        contract = request.node_contract(rank, master_addr or "127.0.0.1")
        return render_ec2_user_data(
            contract, command=command, container_image=self.container_image, env={**self.env, **contract.gang_env()},
            secrets=self.secrets, template=self.user_data_template,
            log_group=self.log_group, log_region=self._region() if self.log_group else None,
        )

    def _tags(self, request: LaunchRequest, rank: int = 0, pool_index: int = 0) -> dict[str, str]:
        tags = dict(self.tags)
        for key, value in request.labels.items():
            tags[f"{TAG_PREFIX}{key.replace('_', '-')}"] = str(value)[:256]
        tags[TOKEN_TAG] = request.token
        tags[f"{TAG_PREFIX}capacity"] = request.capacity.value
        if request.num_nodes > 1:
            tags[RANK_TAG] = str(rank)
            tags[f"{TAG_PREFIX}num-nodes"] = str(request.num_nodes)
            tags[POOL_TAG] = str(pool_index)
        tags.setdefault("Name", f"spot-training-{request.labels.get('task_id', 'task')}-a{request.attempt}"[:256])
        return tags

    def _handle(self, request: LaunchRequest, pool: dict[str, str], instance: dict[str, Any],
                tried: list[str], node_instance_ids: list[str] | None = None) -> EC2Handle:
        instance_type = instance.get("InstanceType") or pool.get("instance_type")
        zone = (instance.get("Placement") or {}).get("AvailabilityZone") or pool.get("availability_zone")
        spot_price = self._spot_price(instance_type, zone) if request.capacity is Capacity.SPOT else None
        where = {"subnet_id": pool["subnet_id"]} if pool.get("subnet_id") else {"availability_zone": zone or "?"}
        return EC2Handle(
            backend=self.kind,
            token=request.token,
            attempt=request.attempt,
            capacity=request.capacity.value,
            launched_at=epoch_seconds(instance.get("LaunchTime")) or time.time(),
            pool=_pool_label({"instance_type": instance_type or "?", **where}),
            instance_id=instance["InstanceId"],
            region=self._region(),
            partition=str(getattr(self.hook, "conn_partition", None) or "aws"),
            instance_type=instance_type,
            subnet_id=instance.get("SubnetId") or pool.get("subnet_id"),
            availability_zone=zone,
            pools_tried=list(tried),
            result_uri=request.contract.result_uri,
            spot_price=spot_price,
            on_demand_price=self.on_demand_price(instance_type),
            node_instance_ids=list(node_instance_ids or []),
        )

    def attempt_links(self, handle: AttemptHandle) -> list[AttemptLink]:
        ec2 = self.load_handle(handle)
        assert isinstance(ec2, EC2Handle)
        domain = console_domain(ec2.partition)
        links = [AttemptLink("EC2 instance", INSTANCE_CONSOLE.format(aws_domain=domain, region_name=ec2.region,
                                                                     instance_id=ec2.instance_id))]
        if self.log_group:
            links.append(AttemptLink("Logs", LOG_STREAM_CONSOLE.format(
                aws_domain=domain, region_name=ec2.region, group=_console_escape(self.log_group),
                stream=_console_escape(ec2.token))))
        return links

    def training_log(self, handle: AttemptHandle, lines: int = TAIL_LINES) -> TrainingLog | None:
        """From the CloudWatch stream with ``log_group``, else from the instance's console output."""
        ec2 = self.load_handle(handle)
        assert isinstance(ec2, EC2Handle)
        if self.log_group:
            shipped = self._cloudwatch_tail(ec2.token, lines)
            if shipped is not None:
                return shipped
        output = self.client.get_console_output(InstanceId=ec2.instance_id, Latest=True).get("Output")
        if not output:
            return None
        return TrainingLog.from_text(f"console output of {ec2.instance_id}", _console_text(output), lines)

    def _cloudwatch_tail(self, stream: str, lines: int) -> TrainingLog | None:
        logs = make_hook(self.aws_conn_id, self.region_name, "logs", self.botocore_config, self.verify).conn
        try:
            events = logs.get_log_events(logGroupName=self.log_group, logStreamName=stream, startFromHead=False,
                                         limit=lines)["events"]
        except logs.exceptions.ResourceNotFoundException:
            return None  # nothing shipped (the shipper never started): the console has it
        if not events:
            return None
        return TrainingLog(f"CloudWatch Logs {self.log_group}/{stream}", [event["message"] for event in events])

    def find(self, request: LaunchRequest) -> EC2Handle | None:
        """The attempt's instance, live or ended, found by its token tag (newest first)."""
        response = self.client.describe_instances(Filters=[{"Name": f"tag:{TOKEN_TAG}", "Values": [request.token]}])
        instances = [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            return None
        instances.sort(key=lambda i: (i.get("State", {}).get("Name") not in ENDED_STATES, str(i.get("LaunchTime"))))
        gang = _newest_gang(instances, request.num_nodes)
        if gang is None:
            return None  # part of a gang: launch() launches the rest idempotently, or releases it
        instance = gang[0]
        pool = {"instance_type": instance.get("InstanceType", "")}
        if instance.get("SubnetId"):
            pool["subnet_id"] = instance["SubnetId"]
        return self._handle(request, pool, instance, [], [i["InstanceId"] for i in gang] if len(gang) > 1 else [])

    # =====================================================================================
    # cloud errors
    # =====================================================================================
    def _action_required(self, error: Exception, request: LaunchRequest, pool: dict[str, str]) -> Exception:
        code, message = error_code(error), error_message(error)
        region = self._region() or "the connection's region"
        if code == "MaxSpotInstanceCountExceeded" or (code == "VcpuLimitExceeded" and request.capacity is Capacity.SPOT):
            return CloudActionRequired(
                f"EC2 refused the spot launch of {_pool_label(pool)} with {code}: the account's spot quota in "
                f"{region} is used up. Raise the Service Quotas quota {SPOT_QUOTA} for region {region}, "
                f"or lower the vCPUs this DAG launches at once. ({message})"
            )
        if code in ("VcpuLimitExceeded", "InstanceLimitExceeded"):
            return CloudActionRequired(
                f"EC2 refused the on-demand launch of {_pool_label(pool)} with {code}. Raise the Service Quotas "
                f"quota {ON_DEMAND_QUOTA} for region {region}. ({message})"
            )
        if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
            return CloudActionRequired(
                f"EC2 refused RunInstances with {code}: the role of connection {self.aws_conn_id!r} needs "
                "ec2:RunInstances, ec2:CreateTags (on instance and volume), ec2:DescribeInstances, "
                "ec2:TerminateInstances, ec2:DescribeSpotPriceHistory and iam:PassRole on the instance "
                f"profile's role. ({message})"
            )
        if code == "IdempotentParameterMismatch":
            return CloudActionRequired(
                f"EC2 says ClientToken {request.token}-p... was used with other parameters ({message}): the "
                "backend's configuration changed between two tries of the same attempt. Clear the task (a new "
                "run gets new tokens) or restore the configuration."
            )
        if code.startswith("Invalid") or code in ("MissingParameter", "InvalidParameterCombination"):
            return CloudActionRequired(f"EC2 rejected the launch parameters ({code}): {message}. Fix the backend's "
                                       "image_id / subnet_ids / security_group_ids / launch_template.")
        return CloudActionRequired(f"EC2 RunInstances failed with {code or type(error).__name__}: {message}")

    # =====================================================================================
    # prices
    # =====================================================================================
    def _spot_price(self, instance_type: str | None, zone: str | None) -> float | None:
        if not instance_type:
            return None
        params: dict[str, Any] = {
            "InstanceTypes": [instance_type],
            "ProductDescriptions": ["Linux/UNIX"],
            "StartTime": time.time(),
        }
        if zone:
            params["AvailabilityZone"] = zone
        try:
            history = self.client.describe_spot_price_history(**params).get("SpotPriceHistory", [])
        except Exception as e:  # a price is informative; never fail a launch over it
            log.warning("DescribeSpotPriceHistory for %s failed: %s", instance_type, e)
            return None
        for entry in history:
            if not zone or entry.get("AvailabilityZone") == zone:
                return float(entry["SpotPrice"])
        return float(history[0]["SpotPrice"]) if history else None

    def on_demand_price(self, instance_type: str | None) -> float | None:
        """The on-demand USD per hour of ``instance_type``: the price table, else the Pricing API."""
        if isinstance(self.on_demand_prices, (int, float)):
            return float(self.on_demand_prices)
        if instance_type and isinstance(self.on_demand_prices, dict) and instance_type in self.on_demand_prices:
            return float(self.on_demand_prices[instance_type])
        if not instance_type or not self.use_pricing_api:
            return None
        if instance_type not in self._price_cache:
            self._price_cache[instance_type] = self._pricing_api_price(instance_type)
        return self._price_cache[instance_type]

    def _pricing_api_price(self, instance_type: str) -> float | None:
        # the Pricing API lives in us-east-1 (and ap-south-1), whatever the instances' region
        hook = make_hook(self.aws_conn_id, "us-east-1", "pricing", self.botocore_config, self.verify)
        filters = {
            "instanceType": instance_type, "regionCode": self._region(), "operatingSystem": "Linux",
            "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
        }
        try:
            response = hook.conn.get_products(
                ServiceCode="AmazonEC2",
                Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
                MaxResults=1,
            )
        except Exception as e:
            log.warning("Pricing API lookup for %s failed (needs pricing:GetProducts): %s", instance_type, e)
            return None
        return on_demand_price_from_product(response.get("PriceList", []))

    def configured_price(self, capacity: Capacity) -> float | None:
        """The on-demand price of every pool's instance type from ``on_demand_prices`` (the highest);
        a spot price is known only from the instance."""
        if capacity is Capacity.SPOT or self.on_demand_prices is None:
            return None
        if isinstance(self.on_demand_prices, (int, float)):
            return float(self.on_demand_prices)
        types = {pool.get("instance_type") for pool in self.capacity_pools()}
        if None in types or not types <= set(self.on_demand_prices):
            return None  # a type without a price (or the launch template's): only the Pricing API can tell
        return max(float(self.on_demand_prices[t]) for t in types)  # type: ignore[index]

    def looks_prices_up(self) -> bool:
        return self.use_pricing_api

    def price_per_hour(self, handle: AttemptHandle | None, capacity: Capacity) -> float | None:
        ec2 = self.load_handle(handle) if handle is not None else None
        assert ec2 is None or isinstance(ec2, EC2Handle)
        if capacity is Capacity.SPOT:
            return ec2.spot_price if ec2 else None
        if ec2 and ec2.on_demand_price is not None:
            return float(ec2.on_demand_price)
        first = next((p.get("instance_type") for p in self.capacity_pools() if p.get("instance_type")), None)
        return self.on_demand_price(ec2.instance_type if ec2 else first)

    # =====================================================================================
    # watching (worker: sync)
    # =====================================================================================
    def describe(self, handle: AttemptHandle) -> AttemptStatus:
        ec2 = self._typed(handle)
        try:
            response = self.client.describe_instances(InstanceIds=ec2.instance_ids)
            instances = [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]
        except Exception as e:
            if error_code(e) != "InvalidInstanceID.NotFound":
                raise
            instances = []
        by_id = {i.get("InstanceId"): i for i in instances}
        return combine_gang([self.settle(node, _unsettled(node, by_id.get(node.instance_id))) for node in _nodes(ec2)])

    def settle(self, handle: AttemptHandle, status: AttemptStatus) -> AttemptStatus:
        """Read the result record (and ask the spot request) an ended instance's status still needs."""
        if status.to_settle is None:
            return status
        ec2 = self._typed(handle)
        request_id = status.details.get("spot_instance_request_id")
        code = self._spot_request_code(request_id) if status.to_settle == "spot-request" else None
        status = settle_ended(status, self._read_result(ec2), ec2.token, code)
        status.to_settle = None
        return status

    def _typed(self, handle: AttemptHandle) -> EC2Handle:
        ec2 = self.load_handle(handle)
        assert isinstance(ec2, EC2Handle)
        return ec2

    def _read_result(self, handle: EC2Handle) -> dict[str, Any] | None:
        if not handle.result_uri:
            return None
        try:
            return read_json_record(handle.result_uri, **self.checkpoint_storage_options())
        except MalformedRecord as e:  # at this attempt's own path: it ended, and how is unknown
            return {"token": handle.token, "exit_code": None, "malformed": str(e)}

    def _spot_request_code(self, request_id: str | None) -> str | None:
        if not request_id:
            return None
        try:
            response = self.client.describe_spot_instance_requests(SpotInstanceRequestIds=[request_id])
        except Exception as e:
            log.warning("DescribeSpotInstanceRequests %s failed: %s", request_id, e)
            return None
        requests = response.get("SpotInstanceRequests", [])
        return (requests[0].get("Status") or {}).get("Code") if requests else None

    def _spot_request_capacity_code(self, instance: dict[str, Any]) -> str | None:
        code = self._spot_request_code(instance.get("SpotInstanceRequestId"))
        return code if code in SPOT_CAPACITY_CODES else None

    # =====================================================================================
    # watching (triggerer: async, batched)
    # =====================================================================================
    def _describe_key(self) -> tuple[Any, ...]:
        return ("ec2", self.aws_conn_id, self.region_name, self._describe_interval())

    def _describe_interval(self) -> float:
        if self.describe_interval is not None:
            return float(self.describe_interval)
        from airflow_spot_training.settings import poll_interval

        return poll_interval()

    async def _async_client(self) -> Any:
        return await self.hook.get_async_conn()

    async def poll(self, handle: AttemptHandle) -> AttemptStatus:
        ec2 = self._typed(handle)
        coordinator = coordinator_for(self._describe_key(), self._async_client, self._describe_interval())
        nodes = _nodes(ec2)
        statuses = [await self._apoll_node(coordinator, node, handle, settle_here=len(nodes) > 1) for node in nodes]
        status = combine_gang(statuses)
        if status.is_final:
            for instance_id in ec2.instance_ids:
                coordinator.forget(instance_id)
        return status

    async def _apoll_node(self, coordinator: Any, node: EC2Handle, caller: AttemptHandle,
                          settle_here: bool) -> AttemptStatus:
        instance = await coordinator.describe(node.instance_id, caller=caller)
        # a running instance's description is the same object tick after tick: its status too
        last_seen = self._last_seen = self._last_seen or {}
        last = last_seen.get(node.instance_id)
        if instance is not None and last is not None and last[0] is instance and not last[1].is_final:
            return last[1]
        # an ended instance's result record is read by the worker (settle), not here: the event fires
        # the moment the shared call shows the end, whatever the number of triggers ending with it.
        # A gang's nodes are settled here, each with its own record, before they are combined.
        status = _unsettled(node, instance)
        last_seen[node.instance_id] = (instance, status)
        if settle_here and status.to_settle is not None:
            status = await asyncio.to_thread(self.settle, node, status)
        return status

    # =====================================================================================
    # stopping
    # =====================================================================================
    def stop(self, handle: AttemptHandle) -> None:
        for instance_id in self._typed(handle).instance_ids:  # a gang: every node
            self._terminate(instance_id)

    def _terminate(self, instance_id: str) -> None:
        try:
            self.client.terminate_instances(InstanceIds=[instance_id])
        except Exception as e:
            if error_code(e) != "InvalidInstanceID.NotFound":
                raise

    async def astop(self, handle: AttemptHandle) -> None:
        async with await self.hook.get_async_conn() as client:
            for instance_id in self._typed(handle).instance_ids:
                try:
                    await client.terminate_instances(InstanceIds=[instance_id])
                except Exception as e:
                    if error_code(e) != "InvalidInstanceID.NotFound":
                        raise


# =========================================================================================
# pure helpers
# =========================================================================================
def classify_instance(instance: dict[str, Any] | None, handle: EC2Handle) -> tuple[AttemptStatus, str | None]:
    """Map a ``DescribeInstances`` entry to a provisional attempt status.

    Returns the status and what is still needed to settle it (see :func:`settle_ended`):
    ``"result"`` (the instance has ended: read its result record), ``"spot-request"``
    (also ask the spot request why it ended), or ``None`` (nothing: it is pending,
    running, or gone).
    """
    details: dict[str, Any] = {"instance_id": handle.instance_id, "instance_type": handle.instance_type,
                               "availability_zone": handle.availability_zone, "pool": handle.pool,
                               "spot_price": handle.spot_price, "on_demand_price": handle.on_demand_price}
    if instance is None:
        if time.time() - float(handle.launched_at or 0) < CONSISTENCY_GRACE:
            return AttemptStatus(state=AttemptState.PENDING, reason="not visible to DescribeInstances yet",
                                 details=details), None
        return AttemptStatus(state=AttemptState.FAILED, reason=f"instance {handle.instance_id} no longer exists",
                             ended_at=time.time(), details=details), "result"
    state = (instance.get("State") or {}).get("Name", "")
    reason = instance.get("StateReason") or {}
    code, message = reason.get("Code", ""), reason.get("Message", "")
    started_at = epoch_seconds(instance.get("LaunchTime"))
    details.update(state=state, state_reason=code)
    if instance.get("SpotInstanceRequestId"):
        details["spot_instance_request_id"] = instance["SpotInstanceRequestId"]
    if state == "pending":
        return AttemptStatus(state=AttemptState.PENDING, reason="pending", started_at=started_at,
                             details=details), None
    if state not in ENDED_STATES:
        return AttemptStatus(state=AttemptState.RUNNING, reason=state, started_at=started_at, details=details), None
    ended = AttemptStatus(state=AttemptState.FAILED, reason=f"{code or state}: {message}".rstrip(": "),
                          started_at=started_at, ended_at=time.time(), details=details)
    if code in PREEMPTION_REASONS:
        ended.state, ended.reason, ended.preemptions = AttemptState.PREEMPTED, f"{code}: spot capacity reclaimed", 1
    elif code in CAPACITY_REASONS:
        ended.state = AttemptState.CAPACITY_UNAVAILABLE
    elif code == USER_SHUTDOWN_REASON:
        ended.state, ended.reason = AttemptState.STOPPED, f"{code}: terminated by a user or an API call"
    elif code != COMPLETION_REASON and instance.get("SpotInstanceRequestId"):
        return ended, "spot-request"
    return ended, "result"


def settle_ended(status: AttemptStatus, result: dict[str, Any] | None, token: str,
                 spot_request_code: str | None = None) -> AttemptStatus:
    """How an ended instance's attempt ended, from its state reason and its result record.

    The result record the bootstrap wrote for *this* attempt (its token must match; a
    record left at the prefix by an earlier run is ignored) wins: exit 0 is a success even
    if the instance was reclaimed afterwards; a training that exited because it caught the
    reclaim notice (``"reclaim_notice": true``) is a preemption, not a failure.
    """
    record = result if result is not None and result.get("token") == token else None
    if result is not None and record is None:
        status.details["ignored_result_record"] = f"token {result.get('token')!r} is not this attempt's"
    if spot_request_code is not None:
        _apply_spot_request_code(status, spot_request_code)
    if record is None:
        if status.details.get("state_reason") == COMPLETION_REASON:
            status.reason = (f"{COMPLETION_REASON}: the instance shut itself down without writing its result "
                             "record (the bootstrap failed early; see the instance's console output)")
        return status
    _apply_result_record(status, record)
    return status


def _apply_spot_request_code(status: AttemptStatus, code: str) -> None:
    """What the spot request's status code says of how the instance ended."""
    status.details["spot_request_status"] = code
    if code in SPOT_INTERRUPTION_CODES:
        status.state, status.reason, status.preemptions = AttemptState.PREEMPTED, f"spot request {code}", 1
    elif code in SPOT_CAPACITY_CODES:
        status.state, status.reason = AttemptState.CAPACITY_UNAVAILABLE, f"spot request {code}"


def _apply_result_record(status: AttemptStatus, record: dict[str, Any]) -> None:
    """What this attempt's result record says: it wins over the state reason."""
    exit_code = record.get("exit_code")
    status.details["exit_code"] = exit_code
    if isinstance(record.get("finished_at"), (int, float)):
        status.ended_at = float(record["finished_at"])
    if record.get("malformed"):
        status.state, status.reason = AttemptState.FAILED, str(record["malformed"])
    elif exit_code == 0:
        status.state, status.reason, status.preemptions = AttemptState.SUCCEEDED, "training exited 0", 0
    elif record.get("reclaim_notice"):
        status.state, status.preemptions = AttemptState.PREEMPTED, 1
        status.reason = f"spot capacity reclaimed: the training caught the notice and exited {exit_code}"
    elif status.state is not AttemptState.PREEMPTED:
        status.state, status.reason = AttemptState.FAILED, f"training exited with code {exit_code}"


def _pool_params(pool: dict[str, str]) -> dict[str, Any]:
    """The ``RunInstances`` arguments that place an instance in a pool: its type, and its subnet or zone."""
    params: dict[str, Any] = {}
    if pool.get("instance_type"):
        params["InstanceType"] = pool["instance_type"]
    if pool.get("subnet_id"):
        params["SubnetId"] = pool["subnet_id"]
    elif pool.get("availability_zone"):
        params["Placement"] = {"AvailabilityZone": pool["availability_zone"]}
    return params


def _unsettled(node: EC2Handle, instance: dict[str, Any] | None) -> AttemptStatus:
    """A node's status as DescribeInstances shows it; ``to_settle`` names what it still needs read."""
    status, needs = classify_instance(instance, node)
    status.to_settle = needs
    return status


def _partial_pool_first(ladder: list[tuple[int, dict[str, str]]], first: int | None) -> list[tuple[int, dict[str, str]]]:
    """The ladder (``(index, pool)`` pairs) with pool ``first`` (a partial gang's) moved to the front."""
    return sorted(ladder, key=lambda entry: entry[0] != first)


def _nodes(handle: EC2Handle) -> list[EC2Handle]:
    """One handle per node of the attempt (rank order), each with its own instance and result record."""
    if not handle.node_instance_ids:
        return [handle]
    return [dataclasses.replace(handle, instance_id=instance_id, node_instance_ids=[],
                                result_uri=node_result_uri(handle.result_uri, rank))
            for rank, instance_id in enumerate(handle.node_instance_ids)]


def _newest_gang(instances: list[dict[str, Any]], num_nodes: int) -> list[dict[str, Any]] | None:
    """From an attempt's instances (oldest first), the newest instance of each rank, if every rank has one."""
    if num_nodes == 1:
        return [instances[-1]]
    newest: dict[int, dict[str, Any]] = {}
    for instance in instances:
        tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags") or []}
        rank = str(tags.get(RANK_TAG, ""))
        if rank.isdigit():
            newest[int(rank)] = instance
    if sorted(newest) != list(range(num_nodes)):
        return None
    return [newest[rank] for rank in range(num_nodes)]


def on_demand_price_from_product(price_list: list[Any]) -> float | None:
    """The hourly USD price in a Pricing API ``GetProducts`` ``PriceList`` entry."""
    for item in price_list:
        product = json.loads(item) if isinstance(item, str) else item
        for term in (product.get("terms", {}).get("OnDemand") or {}).values():
            for dimension in (term.get("priceDimensions") or {}).values():
                usd = (dimension.get("pricePerUnit") or {}).get("USD")
                if usd is not None and float(usd) > 0:
                    return float(usd)
    return None


def _tried_pools(tried: list[str]) -> list[str]:
    """The pool labels of ``"<label>: <code>"`` lines."""
    return [line.split(": ", 1)[0] for line in tried]


def _pool_label(pool: dict[str, str]) -> str:
    where = pool.get("subnet_id") or pool.get("availability_zone") or "any-az"
    return f"{pool.get('instance_type') or 'template-type'}@{where}"


def _console_escape(name: str) -> str:
    """A log group or stream name as the CloudWatch console's URL fragment spells it."""
    return quote(name, safe="").replace("%", "$25")


def _console_text(output: str) -> str:
    """GetConsoleOutput's ``Output`` is base64 (boto3 leaves it so); tolerate plain text."""
    try:
        return base64.b64decode(output, validate=True).decode(errors="replace")
    except (binascii.Error, ValueError):
        return output
