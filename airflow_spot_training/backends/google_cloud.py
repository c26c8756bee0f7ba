"""Google Cloud plumbing shared by the Compute Engine and Vertex AI backends.

Credentials (the Airflow connection, or none against an emulator), resource
labels, deterministic names and idempotency ids, and the translation of Google
API errors into :class:`~airflow_spot_training.backends.base.CloudActionRequired`
messages that name the permission, the quota or the argument to fix.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from airflow_spot_training.backends.base import CloudActionRequired, LaunchRequest, TrainingLog

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

DEFAULT_CONN_ID = "google_cloud_default"
CONSOLE = "https://console.cloud.google.com"
#: namespace of the uuid5 request ids derived from attempt tokens
REQUEST_ID_NAMESPACE = uuid.UUID("5b0f2f4e-8d3a-4c1e-9a57-2f1f0c6a7e11")

_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")
_PROJECT_ID = re.compile(r"[a-z][-a-z0-9:.]{4,61}[a-z0-9]")
_PERMISSION = re.compile(r"\b([a-z][a-zA-Z]*\.[a-zA-Z]+\.[a-zA-Z]+)\b")
_ROLE_FOR_SERVICE = {
    "compute": "roles/compute.instanceAdmin.v1",
    "iam": "roles/iam.serviceAccountUser (on the VM's service account)",
    "aiplatform": "roles/aiplatform.user",
    "storage": "roles/storage.objectAdmin (on the checkpoint bucket)",
}


# -- credentials ---------------------------------------------------------------------------
def credentials_and_project(
    gcp_conn_id: str, impersonation_chain: str | list[str] | None, emulator_host: str | None
) -> tuple[Credentials, str | None]:
    """Credentials from the Airflow connection, or anonymous ones against an emulator.

    Blocking (it may read the connection from the metadata database or the API
    server): call it from a worker or in a thread, never in the triggerer's event loop.
    """
    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), None
    from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

    hook = GoogleBaseHook(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain)
    return hook.get_credentials_and_project_id()


# -- logs ----------------------------------------------------------------------------------
LOGGING_EMULATOR_DOC = ("base URL of an emulator of the Cloud Logging API (http://127.0.0.1:PORT) the last lines of "
                        "a failed attempt are read from; no credentials are used. For tests")


def read_log_tail(credentials: Credentials, project: str, log_filter: str, lines: int,
                  emulator_host: str | None = None) -> list[str]:
    """The newest ``lines`` Cloud Logging entries matching ``log_filter``, oldest first, as text.

    Through the Cloud Logging JSON API (``entries.list``) with the connection's credentials
    (``roles/logging.viewer``); against an emulator, at ``emulator_host``.
    """
    from google.cloud import logging as cloud_logging

    client = cloud_logging.Client(project=project, credentials=credentials, _use_grpc=False,
                                  client_options={"api_endpoint": emulator_host} if emulator_host else None)
    entries = client.list_entries(resource_names=[f"projects/{project}"], filter_=log_filter,
                                  order_by=cloud_logging.DESCENDING, max_results=lines, page_size=lines)
    return [_entry_text(entry.payload) for entry in entries][::-1]


def training_log_tail(backend: Any, project: str, log_filter: str, lines: int, source: str) -> TrainingLog | None:
    """A Google backend's attempt log: the newest ``lines`` entries of ``log_filter``, if any.

    Against an emulator (``emulator_host``) without a Cloud Logging emulator (``logging_emulator_host``),
    none: the real Cloud Logging is never asked about an emulated attempt.
    """
    if backend.emulator_host and not backend.logging_emulator_host:
        return None
    credentials, _ = credentials_and_project(backend.gcp_conn_id, backend.impersonation_chain,
                                             backend.logging_emulator_host)
    found = read_log_tail(credentials, project, log_filter, lines, backend.logging_emulator_host)
    return TrainingLog(source, found) if found else None


def _entry_text(payload: Any) -> str:
    if isinstance(payload, Mapping):
        return str(payload.get("message") or json.dumps(payload, sort_keys=True, default=str))
    return "" if payload is None else str(payload)


def validate_common(*, project_id: str | None, emulator_host: str | None) -> None:
    """Checks both Google backends make (raised as ``ValueError`` inside their model validators)."""
    if project_id is not None and not _PROJECT_ID.fullmatch(project_id):
        raise ValueError(
            f"project_id={project_id!r} is not a Google Cloud project id (lower case, 6-30 characters); "
            "give the project id, or leave it out to use the project of the connection."
        )
    emulator_ok = isinstance(emulator_host, str) and emulator_host.startswith(
        ("http://", "https://", "127.", "localhost"))
    if emulator_host is not None and not emulator_ok:
        raise ValueError(
            f"emulator_host={emulator_host!r} is invalid: give the base URL of an emulator of the API "
            "(e.g. 'http://127.0.0.1:8085'), or leave it out to talk to Google Cloud."
        )


# -- retries ---------------------------------------------------------------------------------
_RATE_WORDS = re.compile(r"rate limit|ratelimit|per minute|per second|too many requests|try again", re.I)


def is_retryable(error: BaseException) -> bool:
    """Throttling and transient server errors: retried with jittered backoff, never shown as failures.

    500, 502, 503, 504, deadline exceeded, and 429/403/RESOURCE_EXHAUSTED answers that are rate
    limits (``rateLimitExceeded``, per-minute or per-second quotas) rather than an exhausted
    resource quota (CPUs, GPUs: the user has to raise those, see :func:`translate_http_error`).
    """
    from google.api_core import exceptions as gexc

    if isinstance(error, (gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable,
                          gexc.GatewayTimeout, gexc.DeadlineExceeded)):
        return True
    if not isinstance(error, (gexc.TooManyRequests, gexc.Forbidden, gexc.ResourceExhausted)):
        return False
    message = getattr(error, "message", None) or str(error)
    reasons = {str(x.get("reason", "")) for x in (getattr(error, "errors", None) or []) if isinstance(x, dict)}
    if reasons & {"rateLimitExceeded", "userRateLimitExceeded"} or _RATE_WORDS.search(message):
        return True
    return isinstance(error, gexc.TooManyRequests) and not re.search(r"\bquota\b", message, re.I)


@functools.lru_cache(maxsize=None)
def rate_limit_retry() -> Any:
    """The retry policy every Google API call of the backends passes (``retry=``): exponential
    backoff with full jitter (google-api-core's), up to 5 minutes, on :func:`is_retryable` errors."""
    from google.api_core import retry

    return retry.Retry(predicate=is_retryable, initial=1.0, maximum=30.0, multiplier=2.0, timeout=300.0)


@functools.lru_cache(maxsize=None)
def rate_limit_retry_async() -> Any:
    """:func:`rate_limit_retry` for the async clients."""
    from google.api_core import retry_async

    return retry_async.AsyncRetry(predicate=is_retryable, initial=1.0, maximum=30.0, multiplier=2.0,
                                  timeout=300.0)


# -- names and labels ----------------------------------------------------------------------
def label_value(value: str) -> str:
    """A Google Cloud label value: lower case letters, digits, ``_`` and ``-``, at most 63."""
    return _LABEL_BAD.sub("_", str(value).lower())[:63]


def resource_labels(request: LaunchRequest, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Labels naming the Airflow task and attempt, plus the user's own."""
    ids = request.labels
    labels = {
        "airflow-dag-id": ids.get("dag_id", ""),
        "airflow-run-id": ids.get("run_id", ""),
        "airflow-task-id": ids.get("task_id", ""),
        "airflow-map-index": ids.get("map_index", "-1"),
        "spot-training-attempt": str(request.attempt),
        "spot-training-run-key": request.contract.run_key,
        "spot-training-token": request.token,
        "spot-training-capacity": request.capacity.value.replace("_", "-"),
    }
    if ids.get("deployment"):
        labels["spot-training-deployment"] = ids["deployment"]
    labels.update(extra or {})
    return {label_value(k): label_value(v) for k, v in labels.items()}


def attempt_name(prefix: str, request: LaunchRequest) -> str:
    """``<prefix>-<run_key>-a<N>``: a valid GCE instance name and a readable job name."""
    return f"{prefix}-{request.contract.run_key}-a{request.attempt}"


def request_id(token: str, scope: str = "") -> str:
    """A deterministic UUID for a request: the same token and scope give the same id."""
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{token}/{scope}"))


# -- errors --------------------------------------------------------------------------------
def permission_in(message: str) -> str | None:
    m = _PERMISSION.search(message or "")
    return m.group(1) if m else None


def permission_message(service: str, action: str, message: str, principal_hint: str) -> str:
    permission = permission_in(message)
    if permission is None:
        return (f"{service} denied {action}: {message}. Grant {principal_hint} the role the call needs "
                f"({', '.join(sorted(set(_ROLE_FOR_SERVICE.values())))}).")
    role = _ROLE_FOR_SERVICE.get(permission.split(".", 1)[0], "a role that includes it")
    return (f"{service} denied {action}: permission '{permission}' is missing. Grant {principal_hint} "
            f"{role}, or a custom role with '{permission}'. ({message})")


def quota_message(service: str, quota: str, region: str | None, limit: Any, project: str | None,
                  message: str) -> str:
    where = f" in region {region}" if region else ""
    cap = f" (limit {limit})" if limit not in (None, "") else ""
    link = "https://console.cloud.google.com/iam-admin/quotas" + (f"?project={project}" if project else "")
    return (f"{service} quota {quota} is exhausted{where}{cap}. Request more of {quota} at {link}, "
            f"or ask for less capacity (machine type, accelerators). ({message})")


def invalid_argument_message(service: str, message: str, field_to_argument: Mapping[str, str],
                             fields: Iterable[str] = ()) -> str:
    haystack = " ".join([message, *fields])
    arguments = sorted({arg for f, arg in field_to_argument.items() if f.lower() in haystack.lower()})
    fix = (f"check the backend argument(s) {', '.join(arguments)}" if arguments
           else "check the backend's arguments")
    return f"{service} rejected the request as invalid: {message}. To fix it, {fix}."


def translate_http_error(
    e: Exception,
    *,
    service: str,
    action: str,
    project: str | None,
    field_to_argument: Mapping[str, str],
    principal_hint: str = "the Airflow connection's service account",
) -> Exception:
    """Map a ``google.api_core`` error to :class:`CloudActionRequired`; others come back as they are."""
    from google.api_core import exceptions as gexc

    message = getattr(e, "message", None) or str(e)
    reasons = {str(x.get("reason", "")) for x in (getattr(e, "errors", None) or []) if isinstance(x, dict)}
    if is_retryable(e):  # still throttled after the retries: not the user's to fix, and not fatal
        return e
    is_quota = (
        isinstance(e, (gexc.ResourceExhausted, gexc.TooManyRequests))
        or bool(reasons & {"quotaExceeded", "QUOTA_EXCEEDED"})
        or (isinstance(e, gexc.Forbidden) and re.search(r"\bquota\b", message, re.I) is not None)
    )
    if is_quota:
        quota = _quota_name(message) or "for this request"
        return CloudActionRequired(quota_message(service, quota, _region_in(message), None, project, message))
    if isinstance(e, (gexc.Forbidden, gexc.PermissionDenied, gexc.Unauthorized, gexc.Unauthenticated)):
        return CloudActionRequired(permission_message(service, action, message, principal_hint))
    if isinstance(e, (gexc.BadRequest, gexc.InvalidArgument, gexc.FailedPrecondition, gexc.NotFound)):
        fields = _violation_fields(e)
        return CloudActionRequired(invalid_argument_message(service, message, field_to_argument, fields))
    return e


def _quota_name(message: str) -> str | None:
    for pattern in (r"Quota '([A-Za-z0-9_\-]+)'", r"(aiplatform\.googleapis\.com/[a-z0-9_]+)",
                    r"quota metrics? ([A-Za-z0-9_./\-]+)"):
        m = re.search(pattern, message or "")
        if m:
            return m.group(1)
    return None


def _region_in(message: str) -> str | None:
    m = re.search(r"\bregion:? '?([a-z]+-[a-z]+\d+)", message or "")
    return m.group(1) if m else None


def _violation_fields(e: Exception) -> list[str]:
    out = []
    for detail in getattr(e, "details", None) or []:
        for violation in getattr(detail, "field_violations", None) or []:
            out.append(getattr(violation, "field", ""))
    return out
