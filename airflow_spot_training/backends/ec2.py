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
    ``DescribeInstances`` call per region and interval (:mod:`.ec2_batching`).

Cost
    The spot price at launch comes from ``DescribeSpotPriceHistory``; the on-demand
    price from ``on_demand_prices`` or, when ``use_pricing_api`` is on, the Pricing API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
from typing import Any

from airflow_spot_training.backends.aws_connection import (
    S3StorageOptions,
    error_code,
    error_message,
    make_hook,
)
from airflow_spot_training.backends.base import (
    CAPACITY_UNAVAILABLE,
    FAILED,
    PENDING,
    PREEMPTED,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    AttemptStatus,
    BackendConfigError,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
    SpotCapacityUnavailable,
)
from airflow_spot_training.backends.ec2_batching import coordinator_for
from airflow_spot_training.bootstrap import render_ec2_user_data
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.runtime.results import read_json_record

log = logging.getLogger(__name__)

TAG_PREFIX = "spot-training:"
TOKEN_TAG = f"{TAG_PREFIX}token"

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

SPOT_QUOTA = ("'All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests' (L-34B43A08), or the "
              "family's own spot quota (G and VT: L-3819A6DF, P: L-7212CCBC, Inf: L-B5D1601B)")
ON_DEMAND_QUOTA = ("'Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances' (L-1216C47A), or the "
                   "family's own on-demand quota (G and VT: L-DB2E81BA, P: L-417A185B)")


class EC2SpotBackend(SpotBackend):
    """Run each attempt on its own EC2 instance, spot first, on-demand after escalation.

    :param command: the training command run on the instance (a shell command line or an
        argument list); with ``container_image``, the container's arguments.
    :param image_id: the AMI; required unless ``launch_template`` names one.
    :param instance_types: instance types to try, in order of preference.
    :param subnet_ids: subnets (one per AZ you accept) to try for each instance type.
    :param pools: an explicit capacity ladder instead of ``instance_types`` x ``subnet_ids``:
        a list of ``{"instance_type": ..., "subnet_id": ... | "availability_zone": ...}``.
    :param launch_template: ``{"LaunchTemplateId" | "LaunchTemplateName": ..., "Version": ...}``;
        explicit parameters given here override the template's.
    :param container_image: run this image with ``docker run`` on the instance (the AMI
        must have Docker) instead of a host command.
    :param env: extra environment variables for the training.
    :param instance_profile: IAM instance profile name or ARN (the training needs S3
        access to the checkpoint prefix).
    :param security_group_ids: security groups of the instance.
    :param key_name: an EC2 key pair for SSH, if wanted.
    :param root_volume_gb: size of the root volume (gp3), if not the AMI's.
    :param root_device_name: the AMI's root device name (``/dev/xvda`` on Amazon Linux).
    :param tags: extra tags for the instance and its volumes.
    :param user_data_template: a replacement for the shipped bootstrap template, with the
        same ``@@NAME@@`` placeholders.
    :param on_demand_prices: on-demand USD per hour by instance type (or one number for
        all), for cost and savings in the ledger.
    :param use_pricing_api: look up on-demand prices missing from ``on_demand_prices`` in
        the AWS Pricing API (needs ``pricing:GetProducts``).
    :param aws_conn_id: the Airflow AWS connection (``aws_default``).
    :param region_name: the region; default: the connection's.
    :param botocore_config: extra botocore ``Config`` arguments (retries default to
        ``standard`` mode, 10 attempts).
    :param describe_interval: seconds between two shared ``DescribeInstances`` calls in the
        triggerer; default: ``[spot_training] poll_interval``. ``EC2SpotTrainingOperator``
        sets it to its ``poll_interval``.
    """

    kind = "ec2"
    default_restart_overhead = 180.0

    def __init__(
        self,
        command: str | list[str] | None = None,
        *,
        image_id: str | None = None,
        instance_types: list[str] | None = None,
        subnet_ids: list[str] | None = None,
        pools: list[dict[str, str]] | None = None,
        launch_template: dict[str, str] | None = None,
        container_image: str | None = None,
        env: dict[str, str] | None = None,
        instance_profile: str | None = None,
        security_group_ids: list[str] | None = None,
        key_name: str | None = None,
        root_volume_gb: int | None = None,
        root_device_name: str = "/dev/xvda",
        tags: dict[str, str] | None = None,
        user_data_template: str | None = None,
        on_demand_prices: dict[str, float] | float | None = None,
        use_pricing_api: bool = False,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        botocore_config: dict[str, Any] | None = None,
        describe_interval: float | None = None,
    ) -> None:
        self.command = command
        self.image_id = image_id
        self.instance_types = list(instance_types) if instance_types is not None else None
        self.subnet_ids = list(subnet_ids) if subnet_ids is not None else None
        self.pools = [dict(p) for p in pools] if pools is not None else None
        self.launch_template = dict(launch_template) if launch_template else None
        self.container_image = container_image
        self.env = dict(env or {})
        self.instance_profile = instance_profile
        self.security_group_ids = list(security_group_ids) if security_group_ids else None
        self.key_name = key_name
        self.root_volume_gb = root_volume_gb
        self.root_device_name = root_device_name
        self.tags = dict(tags or {})
        self.user_data_template = user_data_template
        self.on_demand_prices = on_demand_prices
        self.use_pricing_api = use_pricing_api
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.botocore_config = botocore_config
        self.describe_interval = describe_interval
        self._hook: Any = None
        self._storage = S3StorageOptions(aws_conn_id, region_name)
        self._price_cache: dict[str, float | None] = {}
        self.validate()

    # =====================================================================================
    # configuration
    # =====================================================================================
    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "image_id": self.image_id,
            "instance_types": self.instance_types,
            "subnet_ids": self.subnet_ids,
            "pools": self.pools,
            "launch_template": self.launch_template,
            "container_image": self.container_image,
            "env": self.env,
            "instance_profile": self.instance_profile,
            "security_group_ids": self.security_group_ids,
            "key_name": self.key_name,
            "root_volume_gb": self.root_volume_gb,
            "root_device_name": self.root_device_name,
            "tags": self.tags,
            "user_data_template": self.user_data_template,
            "on_demand_prices": self.on_demand_prices,
            "use_pricing_api": self.use_pricing_api,
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "botocore_config": self.botocore_config,
            "describe_interval": self.describe_interval,
        }

    def validate(self) -> None:
        if not self.command or not (
            isinstance(self.command, str)
            or (isinstance(self.command, list) and all(isinstance(a, str) for a in self.command))
        ):
            raise BackendConfigError(
                "EC2SpotBackend needs command=...: the training command run on the instance, as a shell "
                "command line or a list of strings (with container_image: the container's arguments)."
            )
        if not self.image_id and not self.launch_template:
            raise BackendConfigError(
                "EC2SpotBackend needs image_id='ami-...' or launch_template={'LaunchTemplateName': ...}."
            )
        if self.launch_template is not None and not (
            {"LaunchTemplateId", "LaunchTemplateName"} & set(self.launch_template)
        ):
            raise BackendConfigError(
                f"launch_template={self.launch_template!r} must name the template: "
                "{'LaunchTemplateId': 'lt-...'} or {'LaunchTemplateName': '...'} (and optionally 'Version')."
            )
        _check_str_list(self.instance_types, "instance_types")
        _check_str_list(self.subnet_ids, "subnet_ids")
        _check_str_list(self.security_group_ids, "security_group_ids")
        if self.pools is not None and self.instance_types is not None:
            raise BackendConfigError("give either pools=[...] or instance_types=[...] (with subnet_ids), not both.")
        if self.pools is not None:
            _check_pools(self.pools)
        if not self.pools and not self.instance_types and not self.launch_template:
            raise BackendConfigError(
                "EC2SpotBackend needs instance_types=['g5.xlarge', ...] (tried in order), or pools=[...], "
                "or a launch_template that sets the instance type."
            )
        if self.root_volume_gb is not None and (
            not isinstance(self.root_volume_gb, int) or isinstance(self.root_volume_gb, bool)
            or self.root_volume_gb < 1
        ):
            raise BackendConfigError(f"root_volume_gb={self.root_volume_gb!r} must be a positive integer (GiB).")
        _check_prices(self.on_demand_prices)
        if self.describe_interval is not None and (
            not isinstance(self.describe_interval, (int, float)) or self.describe_interval <= 0
        ):
            raise BackendConfigError(f"describe_interval={self.describe_interval!r} must be a positive number.")
        for name in self.env:
            if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name[0].isdigit():
                raise BackendConfigError(f"env: {name!r} is not a valid environment variable name.")

    def storage_options(self) -> dict[str, Any]:
        return self._storage.get()

    # =====================================================================================
    # clients
    # =====================================================================================
    @property
    def hook(self) -> Any:
        if self._hook is None:
            self._hook = make_hook(self.aws_conn_id, self.region_name, "ec2", self.botocore_config)
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
    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        existing = self.find(request)
        if existing is not None:
            log.info("attempt %s already has instance %s; re-attaching", request.attempt, existing["instance_id"])
            return existing
        tried: list[str] = []
        pools = self.capacity_pools()
        for index, pool in enumerate(pools):
            label = _pool_label(pool)
            try:
                instance = self._run_instance(request, pool, index)
            except Exception as e:
                code = error_code(e)
                if code in CAPACITY_ERRORS:
                    log.warning("pool %s: %s; trying the next pool", label, code)
                    tried.append(f"{label}: {code}")
                    continue
                raise self._action_required(e, request, pool) from e
            capacity_code = self._spot_request_capacity_code(instance)
            if capacity_code:
                log.warning("pool %s: spot request %s; trying the next pool", label, capacity_code)
                self._terminate(instance["InstanceId"])
                tried.append(f"{label}: {capacity_code}")
                continue
            return self._handle(request, pool, instance, tried)
        if request.capacity is Capacity.SPOT:
            raise SpotCapacityUnavailable(
                f"no spot capacity in any of {len(pools)} pool(s): " + "; ".join(tried), pools_tried=tried
            )
        raise CloudActionRequired(
            f"no on-demand capacity in any of {len(pools)} pool(s) ({'; '.join(tried)}). Add instance types, "
            "or subnets in other availability zones, to instance_types / subnet_ids / pools."
        )

    def _run_instance(self, request: LaunchRequest, pool: dict[str, str], index: int) -> dict[str, Any]:
        response = self.client.run_instances(**self.run_instances_params(request, pool, index))
        return response["Instances"][0]

    def run_instances_params(self, request: LaunchRequest, pool: dict[str, str], index: int) -> dict[str, Any]:
        """The ``RunInstances`` arguments for one attempt in one pool."""
        tags = [{"Key": k, "Value": v} for k, v in self._tags(request).items()]
        params: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": f"{request.token}-p{index}",
            "UserData": self.user_data(request),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if self.launch_template:
            params["LaunchTemplate"] = dict(self.launch_template)
        if self.image_id:
            params["ImageId"] = self.image_id
        if pool.get("instance_type"):
            params["InstanceType"] = pool["instance_type"]
        if pool.get("subnet_id"):
            params["SubnetId"] = pool["subnet_id"]
        elif pool.get("availability_zone"):
            params["Placement"] = {"AvailabilityZone": pool["availability_zone"]}
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
        if request.capacity is Capacity.SPOT:
            # no MaxPrice: AWS advises against it, it only raises interruption rates
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return params

    def user_data(self, request: LaunchRequest) -> str:
        """The rendered bootstrap script for one attempt."""
        command = self.command if isinstance(self.command, str) else shlex.join(self.command or [])
        return render_ec2_user_data(
            request.contract, command=command, container_image=self.container_image, env=self.env,
            template=self.user_data_template,
        )

    def _tags(self, request: LaunchRequest) -> dict[str, str]:
        tags = dict(self.tags)
        for key, value in request.labels.items():
            tags[f"{TAG_PREFIX}{key.replace('_', '-')}"] = str(value)[:256]
        tags[TOKEN_TAG] = request.token
        tags[f"{TAG_PREFIX}capacity"] = request.capacity.value
        tags.setdefault("Name", f"spot-training-{request.labels.get('task_id', 'task')}-a{request.attempt}"[:256])
        return tags

    def _handle(self, request: LaunchRequest, pool: dict[str, str], instance: dict[str, Any],
                tried: list[str]) -> dict[str, Any]:
        instance_type = instance.get("InstanceType") or pool.get("instance_type")
        zone = (instance.get("Placement") or {}).get("AvailabilityZone") or pool.get("availability_zone")
        spot_price = self._spot_price(instance_type, zone) if request.capacity is Capacity.SPOT else None
        return {
            "backend": self.kind,
            "instance_id": instance["InstanceId"],
            "region": self._region(),
            "token": request.token,
            "attempt": request.attempt,
            "capacity": request.capacity.value,
            "instance_type": instance_type,
            "subnet_id": instance.get("SubnetId") or pool.get("subnet_id"),
            "availability_zone": zone,
            "pool": _pool_label({"instance_type": instance_type or "?", **({"subnet_id": pool["subnet_id"]}
                                 if pool.get("subnet_id") else {"availability_zone": zone or "?"})}),
            "pools_tried": list(tried),
            "launched_at": _epoch(instance.get("LaunchTime")) or time.time(),
            "result_uri": request.contract.result_uri,
            "spot_price": spot_price,
            "on_demand_price": self.on_demand_price(instance_type),
        }

    def find(self, request: LaunchRequest) -> dict[str, Any] | None:
        """The attempt's instance, live or ended, found by its token tag (newest first)."""
        response = self.client.describe_instances(Filters=[{"Name": f"tag:{TOKEN_TAG}", "Values": [request.token]}])
        instances = [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            return None
        instances.sort(key=lambda i: (i.get("State", {}).get("Name") not in ENDED_STATES, str(i.get("LaunchTime"))))
        instance = instances[-1]
        pool = {"instance_type": instance.get("InstanceType", "")}
        if instance.get("SubnetId"):
            pool["subnet_id"] = instance["SubnetId"]
        return self._handle(request, pool, instance, [])

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
        hook = make_hook(self.aws_conn_id, "us-east-1", "pricing", self.botocore_config)
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

    def price_per_hour(self, handle: dict[str, Any], capacity: Capacity) -> float | None:
        if capacity is Capacity.SPOT:
            return handle.get("spot_price") if handle else None
        if handle and handle.get("on_demand_price") is not None:
            return float(handle["on_demand_price"])
        first = next((p.get("instance_type") for p in self.capacity_pools() if p.get("instance_type")), None)
        return self.on_demand_price(handle.get("instance_type") if handle else first)

    # =====================================================================================
    # watching (worker: sync)
    # =====================================================================================
    def describe(self, handle: dict[str, Any]) -> AttemptStatus:
        try:
            response = self.client.describe_instances(InstanceIds=[handle["instance_id"]])
            instances = [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]
        except Exception as e:
            if error_code(e) != "InvalidInstanceID.NotFound":
                raise
            instances = []
        instance = instances[0] if instances else None
        status, needs = classify_instance(instance, handle)
        if needs == "result":
            return self._completed(status, self._read_result(handle))
        if needs == "spot-request":
            return self._from_spot_request(status, self._spot_request_code(instance))
        return status

    def _read_result(self, handle: dict[str, Any]) -> dict[str, Any] | None:
        uri = handle.get("result_uri")
        return read_json_record(uri, **self.storage_options()) if uri else None

    @staticmethod
    def _completed(status: AttemptStatus, result: dict[str, Any] | None) -> AttemptStatus:
        if result is None:
            status.state = FAILED
            status.reason = (f"{COMPLETION_REASON}: the instance shut itself down without writing a result record "
                             "(the bootstrap failed early; see the instance's console output)")
            return status
        exit_code = result.get("exit_code")
        status.details["exit_code"] = exit_code
        if exit_code == 0:
            status.state, status.reason = SUCCEEDED, f"{COMPLETION_REASON}: training exited 0"
        else:
            status.state, status.reason = FAILED, f"{COMPLETION_REASON}: training exited with code {exit_code}"
        if result.get("finished_at"):
            status.ended_at = float(result["finished_at"])
        return status

    @staticmethod
    def _from_spot_request(status: AttemptStatus, code: str | None) -> AttemptStatus:
        status.details["spot_request_status"] = code
        if code in SPOT_INTERRUPTION_CODES:
            status.state, status.reason = PREEMPTED, f"spot request {code}"
        elif code in SPOT_CAPACITY_CODES:
            status.state, status.reason = CAPACITY_UNAVAILABLE, f"spot request {code}"
        return status

    def _spot_request_code(self, instance: dict[str, Any] | None) -> str | None:
        request_id = (instance or {}).get("SpotInstanceRequestId")
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
        code = self._spot_request_code(instance)
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

    async def poll(self, handle: dict[str, Any]) -> AttemptStatus:
        coordinator = coordinator_for(self._describe_key(), self._async_client, self._describe_interval())
        instance = await coordinator.describe(handle["instance_id"], caller=handle)
        status, needs = classify_instance(instance, handle)
        if needs == "result":
            result = await asyncio.to_thread(self._read_result, handle)
            status = self._completed(status, result)
        elif needs == "spot-request":
            code = await asyncio.to_thread(self._spot_request_code, instance)
            status = self._from_spot_request(status, code)
        if status.is_final:
            coordinator.forget(handle["instance_id"])
        return status

    # =====================================================================================
    # stopping
    # =====================================================================================
    def stop(self, handle: dict[str, Any]) -> None:
        self._terminate(handle["instance_id"])

    def _terminate(self, instance_id: str) -> None:
        try:
            self.client.terminate_instances(InstanceIds=[instance_id])
        except Exception as e:
            if error_code(e) != "InvalidInstanceID.NotFound":
                raise

    async def astop(self, handle: dict[str, Any]) -> None:
        async with await self.hook.get_async_conn() as client:
            try:
                await client.terminate_instances(InstanceIds=[handle["instance_id"]])
            except Exception as e:
                if error_code(e) != "InvalidInstanceID.NotFound":
                    raise


# =========================================================================================
# pure helpers
# =========================================================================================
def classify_instance(instance: dict[str, Any] | None, handle: dict[str, Any]) -> tuple[AttemptStatus, str | None]:
    """Map a ``DescribeInstances`` entry to an attempt status.

    Returns the status and what is still needed to finish it: ``"result"`` (read the
    result record: the instance shut itself down), ``"spot-request"`` (ask the spot
    request why the instance ended), or ``None``.
    """
    details: dict[str, Any] = {k: handle.get(k) for k in ("instance_id", "instance_type", "availability_zone",
                                                        "pool", "spot_price", "on_demand_price")}
    if instance is None:
        if time.time() - float(handle.get("launched_at") or 0) < CONSISTENCY_GRACE:
            return AttemptStatus(state=PENDING, reason="not visible to DescribeInstances yet", details=details), None
        return AttemptStatus(state=FAILED, reason=f"instance {handle.get('instance_id')} no longer exists",
                             ended_at=time.time(), details=details), None
    state = (instance.get("State") or {}).get("Name", "")
    reason = instance.get("StateReason") or {}
    code, message = reason.get("Code", ""), reason.get("Message", "")
    started_at = _epoch(instance.get("LaunchTime"))
    details.update(state=state, state_reason=code)
    if state == "pending":
        return AttemptStatus(state=PENDING, reason="pending", started_at=started_at, details=details), None
    if state == "running":
        return AttemptStatus(state=RUNNING, reason="running", started_at=started_at, details=details), None
    ended = AttemptStatus(state=FAILED, reason=f"{code or state}: {message}".rstrip(": "), started_at=started_at,
                          ended_at=time.time(), details=details)
    if state not in ENDED_STATES:
        return AttemptStatus(state=RUNNING, reason=state, started_at=started_at, details=details), None
    if code in PREEMPTION_REASONS:
        ended.state, ended.reason, ended.preemptions = PREEMPTED, f"{code}: spot capacity reclaimed", 1
        return ended, None
    if code == COMPLETION_REASON:
        return ended, "result"
    if code in CAPACITY_REASONS:
        ended.state = CAPACITY_UNAVAILABLE
        return ended, None
    if instance.get("SpotInstanceRequestId"):
        return ended, "spot-request"
    if code == USER_SHUTDOWN_REASON:
        ended.state, ended.reason = STOPPED, f"{code}: terminated by a user or an API call, not by the training"
    return ended, None


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


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return None


def _pool_label(pool: dict[str, str]) -> str:
    where = pool.get("subnet_id") or pool.get("availability_zone") or "any-az"
    return f"{pool.get('instance_type') or 'template-type'}@{where}"


def _check_str_list(value: Any, argument: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise BackendConfigError(f"{argument}={value!r} must be a non-empty list of strings.")


def _check_pools(pools: list[dict[str, str]]) -> None:
    if not pools:
        raise BackendConfigError("pools=[] is empty: give at least one {'instance_type': ..., 'subnet_id': ...}.")
    for pool in pools:
        unknown = set(pool) - {"instance_type", "subnet_id", "availability_zone"}
        if unknown or not pool.get("instance_type"):
            raise BackendConfigError(
                f"pools entry {pool!r} is invalid: each pool is {{'instance_type': 'g5.xlarge', "
                "'subnet_id': 'subnet-...'}} or {'instance_type': ..., 'availability_zone': 'us-east-1a'}."
            )


def _check_prices(prices: Any) -> None:
    if prices is None:
        return
    if isinstance(prices, (int, float)) and not isinstance(prices, bool) and prices > 0:
        return
    if isinstance(prices, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        for k, v in prices.items()
    ):
        return
    raise BackendConfigError(
        f"on_demand_prices={prices!r} is invalid: give USD per hour by instance type, "
        "e.g. {'g5.xlarge': 1.006}, or one positive number."
    )
