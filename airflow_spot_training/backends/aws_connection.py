"""How the AWS backends reach AWS: one Airflow connection, one retry policy.

Both :mod:`.ec2` and :mod:`.sagemaker` build their boto3 / aiobotocore clients
through the Amazon provider's :class:`~airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`,
so the standard ``aws_default`` connection, its ``region_name`` and
``endpoint_url`` extras and the provider's region handling apply unchanged.

Throttling (``RequestLimitExceeded``, ``ThrottlingException``) is retried by
botocore itself with exponential backoff and jitter (``standard`` retry mode);
the backends never sleep-and-retry by hand.
"""

from __future__ import annotations

import threading
import time
from typing import Any

#: botocore retry policy used unless the user's ``botocore_config`` says otherwise
DEFAULT_RETRIES = {"mode": "standard", "max_attempts": 10}
#: seconds the fsspec options (credentials) are reused before being read again
STORAGE_OPTIONS_TTL = 600.0


def client_config(botocore_config: dict[str, Any] | None) -> dict[str, Any]:
    """The botocore ``Config`` keyword arguments: the user's, with a retry policy by default."""
    config = dict(botocore_config or {})
    config.setdefault("retries", dict(DEFAULT_RETRIES))
    return config


def make_hook(aws_conn_id: str | None, region_name: str | None, client_type: str,
              botocore_config: dict[str, Any] | None = None, verify: bool | str | None = None) -> Any:
    """An ``AwsBaseHook`` for one service (imported lazily: DAG files parse without it).

    :param verify: SSL verification, as the Amazon provider's operators take it (``False``,
        or the path of a CA bundle); ``None`` uses the connection's setting.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=aws_conn_id, region_name=region_name, client_type=client_type,
                       config=client_config(botocore_config), verify=verify)


def console_domain(partition: str | None) -> str:
    """The AWS console's domain for a partition (``aws``, ``aws-cn``, ``aws-us-gov``)."""
    from airflow.providers.amazon.aws.links.base_aws import BaseAwsLink

    return BaseAwsLink.get_aws_domain(partition or "aws") or "aws.amazon.com"


def error_code(error: Exception) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(error)


#: (conn id, region) -> (options, monotonic time read): shared by every backend of the process,
#: so a triggerer with a thousand EC2 triggers reads the connection once, not a thousand times
_STORAGE_CACHE: dict[tuple[Any, ...], tuple[dict[str, Any], float]] = {}
_STORAGE_LOCK = threading.Lock()


class S3StorageOptions:
    """fsspec (s3fs) options derived from the same Airflow connection as the backend.

    The endpoint (for S3-compatible stores and test servers) and the credentials
    come from the connection, so the worker, the triggerer and the backend all
    read the checkpoint prefix the same way. Cached per process for
    :data:`STORAGE_OPTIONS_TTL` seconds because temporary credentials expire.

    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the region, when not the connection's.
    :param verify: SSL verification (``False`` or a CA bundle path), as for the backend's clients.
    """

    def __init__(self, aws_conn_id: str | None, region_name: str | None, verify: bool | str | None = None) -> None:
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify

    def get(self) -> dict[str, Any]:
        key = (self.aws_conn_id, self.region_name, self.verify)
        with _STORAGE_LOCK:
            cached = _STORAGE_CACHE.get(key)
            if cached is not None and time.monotonic() - cached[1] < STORAGE_OPTIONS_TTL:
                return dict(cached[0])
            options = self._read()
            _STORAGE_CACHE[key] = (options, time.monotonic())
            return dict(options)

    def _read(self) -> dict[str, Any]:
        hook = make_hook(self.aws_conn_id, self.region_name, "s3", verify=self.verify)
        options: dict[str, Any] = {}
        credentials = hook.get_credentials()
        if credentials is not None and credentials.access_key:
            options.update(key=credentials.access_key, secret=credentials.secret_key)
            if credentials.token:
                options["token"] = credentials.token
        client_kwargs: dict[str, Any] = {}
        endpoint = hook.conn_config.get_service_endpoint_url("s3")
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if hook.region_name:
            client_kwargs["region_name"] = hook.region_name
        if self.verify is not None:
            client_kwargs["verify"] = self.verify
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return options


def clear_storage_options_cache() -> None:
    """Forget cached S3 options (the connection changed)."""
    with _STORAGE_LOCK:
        _STORAGE_CACHE.clear()
