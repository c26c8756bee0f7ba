"""A fake Compute Engine REST API on 127.0.0.1, for the real google-cloud-compute client.

It keeps instances and zone operations in memory, records every request it
receives, and lets a test inject what the cloud would do: a preemption (the VM
is deleted and a ``compute.instances.preempted`` zone operation appears), a zone
out of capacity (``ZONE_RESOURCE_POOL_EXHAUSTED`` in the insert operation), a
quota error (``QUOTA_EXCEEDED`` with ``quotaInfo``), or a 403 permission error.

It also answers the GCE metadata paths the startup script reads
(``/computeMetadata/v1/...``), a minimal GCS media upload and Secret Manager's
``versions.access``, so the script can run against it too. Many VMs can run their startup scripts against it at once:
``/vm/<name>/computeMetadata/v1/...`` answers from that instance's own metadata items
(plus ``instance/name``, ``instance/zone``, ``project/project-id``, a token, and
``instance/preempted``, ``TRUE`` once the test names it in ``preempted_vms``).

``before_request`` lets a test play the cloud's less common answers: it is called with
each request before it is handled (outside the lock, so it may block) and may return
``(status, payload)`` to answer instead (a throttled or failed call).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from tests.fakes.loopback import LoopbackServer

BASE = "https://www.googleapis.com/compute/v1"
INSTANCE_RE = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances(?:/([^/]+))?$")
OPERATION_RE = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations(?:/([^/]+?))?(/wait)?$")
FILTER_TERM_RE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeGCE:
    """State of the fake cloud; tests read and change it directly."""

    project: str = "test-project"
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (zone, name) -> Instance
    operations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (zone, name) -> Operation
    requests: list[Recorded] = field(default_factory=list)
    exhausted_zones: set[str] = field(default_factory=set)
    #: zone -> how many VMs it holds before it answers ZONE_RESOURCE_POOL_EXHAUSTED (partial capacity)
    zone_capacity: dict[str, int] = field(default_factory=dict)
    quota_exceeded: dict[str, Any] | None = None  # {"metric": ..., "limit_name": ..., "region": ...}
    denied_permission: str | None = None
    gcs_root: Path | None = None  # where the fake GCS upload writes gs://bucket/object
    metadata: dict[str, str] = field(default_factory=dict)  # path under computeMetadata/v1 -> value
    secrets: dict[str, str] = field(default_factory=dict)  # Secret Manager version name -> value
    #: called in a thread after each successful insert with (zone, instance): plays the VM
    on_insert: Any = None
    #: called with each Recorded request before it is handled; may return (status, payload)
    before_request: Any = None
    #: names of VMs whose metadata says instance/preempted = TRUE
    preempted_vms: set[str] = field(default_factory=set)
    #: the access token VMs get from their metadata server (tells their calls from the backend's)
    vm_token: str = "vm-token"
    lock: threading.Lock = field(default_factory=threading.Lock)
    _request_ids: dict[str, tuple[str, str]] = field(default_factory=dict)

    # -- what a test reads -------------------------------------------------------------
    def calls(self, method: str, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and contains in r.path]

    def inserts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/instances")]

    def live_instances(self) -> list[dict[str, Any]]:
        return [i for i in self.instances.values() if i["status"] != "DELETED"]

    # -- what a test makes the cloud do ------------------------------------------------
    def preempt(self, name: str) -> None:
        """Reclaim a spot VM: it is deleted (terminationAction DELETE) and a preempted op is logged."""
        with self.lock:
            zone, inst = self._find(name)
            self.instances.pop((zone, name))
            self._operation(zone, "compute.instances.preempted", inst, user="system")

    def finish(self, name: str) -> None:
        """The VM deletes itself at the end of the startup script."""
        with self.lock:
            zone, inst = self._find(name)
            self.instances.pop((zone, name))
            self._operation(zone, "delete", inst)

    def _find(self, name: str) -> tuple[str, dict[str, Any]]:
        for (zone, n), inst in self.instances.items():
            if n == name:
                return zone, inst
        raise KeyError(name)

    # -- operations ----------------------------------------------------------------------
    def _operation(self, zone: str, op_type: str, inst: dict[str, Any], *, user: str = "tester",
                   error: dict[str, Any] | None = None) -> dict[str, Any]:
        name = f"operation-{uuid.uuid4().hex[:12]}"
        op = {
            "kind": "compute#operation",
            "id": str(uuid.uuid4().int % 10**18),
            "name": name,
            "zone": f"{BASE}/projects/{self.project}/zones/{zone}",
            "operationType": op_type,
            "targetLink": f"{BASE}/projects/{self.project}/zones/{zone}/instances/{inst['name']}",
            "targetId": inst.get("id", "0"),
            "status": "DONE",
            "progress": 100,
            "user": user,
            "selfLink": f"{BASE}/projects/{self.project}/zones/{zone}/operations/{name}",
        }
        if error:
            op["error"] = error
            op["httpErrorStatusCode"] = 503 if "RESOURCE_POOL" in json.dumps(error) else 403
        self.operations[(zone, name)] = op
        return op

    # -- request handling --------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
        recorded = Recorded(method, path, query, body, dict(headers or {}))
        if self.before_request is not None:
            answer = self.before_request(recorded)
            if answer is not None:
                with self.lock:
                    self.requests.append(recorded)
                return answer
        with self.lock:
            self.requests.append(recorded)
            if path.startswith("/vm/"):
                return self._vm_metadata(path)
            if path.startswith("/computeMetadata/v1/"):
                value = self.metadata.get(path[len("/computeMetadata/v1/"):])
                return (200, value) if value is not None else (404, "not found")
            if path.startswith("/upload/storage/v1/b/"):
                return self._upload(path, query, body)
            if path.startswith("/v1/projects/") and path.endswith(":access"):
                return self._secret(path[len("/v1/"):-len(":access")])
            if self.denied_permission:
                return 403, _error(403, f"Required '{self.denied_permission}' permission for "
                                        f"'projects/{self.project}/zones/x/instances/y'", "forbidden")
            m = INSTANCE_RE.match(path)
            if m:
                return self._instances(method, m.group(2), m.group(3), query, body)
            m = OPERATION_RE.match(path)
            if m:
                return self._operations(m.group(2), m.group(3), query)
            return 404, _error(404, f"The resource '{path}' was not found", "notFound")

    def from_vm(self, request: Recorded) -> bool:
        """Whether a request came from a VM (its metadata token), not from the backend's client."""
        return request.headers.get("Authorization") == f"Bearer {self.vm_token}"

    def _vm_metadata(self, path: str) -> tuple[int, Any]:
        _, _, name, rest = path.split("/", 3)
        key = rest[len("computeMetadata/v1/"):] if rest.startswith("computeMetadata/v1/") else None
        found = [(z, i) for (z, n), i in self.instances.items() if n == name]
        if key is None or not found:
            return (200, "TRUE") if key == "instance/preempted" and name in self.preempted_vms else (404, "gone")
        zone, inst = found[0]
        values = {item["key"]: item["value"] for item in (inst.get("metadata") or {}).get("items", [])}
        standard = {
            "instance/name": name,
            "instance/zone": f"projects/123/zones/{zone}",
            "project/project-id": self.project,
            "instance/service-accounts/default/token": json.dumps({"access_token": self.vm_token,
                                                                   "expires_in": 3600}),
            "instance/preempted": "TRUE" if name in self.preempted_vms else "FALSE",
        }
        if key in standard:
            return 200, standard[key]
        if key.startswith("instance/attributes/") and key[len("instance/attributes/"):] in values:
            return 200, values[key[len("instance/attributes/"):]]
        return 404, "not found"

    def _instances(self, method: str, zone: str, name: str | None, query: dict[str, str],
                   body: Any) -> tuple[int, Any]:
        if method == "POST" and name is None:
            return self._insert(zone, query, body)
        key = (zone, name or "")
        inst = self.instances.get(key)
        if method == "GET":
            if inst is None:
                return 404, _error(404, f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' "
                                        "was not found", "notFound")
            return 200, inst
        if method == "DELETE":
            if inst is None:
                return 404, _error(404, f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' "
                                        "was not found", "notFound")
            self.instances.pop(key)
            return 200, self._operation(zone, "delete", inst)
        return 405, _error(405, "method not allowed", "badRequest")

    def _insert(self, zone: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        request_id = query.get("requestId")
        if request_id and request_id in self._request_ids:
            return 200, self.operations[self._request_ids[request_id]]
        name = body["name"]
        machine_type = body.get("machineType", "").rsplit("/", 1)[-1]
        if machine_type == "bogus":  # what the API says about a machine type that does not exist
            return 400, _error(400, "Invalid value for field 'resource.machineType': "
                                    f"'{body['machineType']}'. Machine type with name '{machine_type}' does not "
                                    f"exist in zone '{zone}'.", "invalid")
        if (zone, name) in self.instances:
            return 409, _error(409, f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' "
                                    "already exists", "alreadyExists")
        inst = {**body, "id": str(uuid.uuid4().int % 10**18), "status": "RUNNING",
                "zone": f"{BASE}/projects/{self.project}/zones/{zone}",
                "selfLink": f"{BASE}/projects/{self.project}/zones/{zone}/instances/{name}"}
        error = None
        held = sum(1 for (z, _), i in self.instances.items() if z == zone and i["status"] != "DELETED")
        if zone in self.exhausted_zones or held >= self.zone_capacity.get(zone, held + 1):
            error = {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                                 "message": f"The zone 'projects/{self.project}/zones/{zone}' does not have "
                                            "enough resources available to fulfill the request."}]}
        elif self.quota_exceeded:
            q = self.quota_exceeded
            error = {"errors": [{"code": "QUOTA_EXCEEDED",
                                 "message": f"Quota '{q['limit_name']}' exceeded.  Limit: 0.0 in region {q['region']}.",
                                 "errorDetails": [{"quotaInfo": {"metricName": q["metric"],
                                                                 "limitName": q["limit_name"],
                                                                 "dimensions": {"region": q["region"]},
                                                                 "limit": 0}}]}]}
        else:
            self.instances[(zone, name)] = inst
            if self.on_insert is not None:
                threading.Thread(target=self.on_insert, args=(zone, inst), daemon=True).start()
        op = self._operation(zone, "insert", inst, error=error)
        if request_id:
            self._request_ids[request_id] = (zone, op["name"])
        return 200, op

    def _operations(self, zone: str, name: str | None, query: dict[str, str]) -> tuple[int, Any]:
        if name:
            op = self.operations.get((zone, name))
            return (200, op) if op else (404, _error(404, f"operation {name} not found", "notFound"))
        terms = dict(FILTER_TERM_RE.findall(query.get("filter", "")))
        items = [op for (z, _), op in self.operations.items()
                 if z == zone and all(str(op.get(k)) == v for k, v in terms.items())]
        return 200, {"kind": "compute#operationList", "items": items}

    def _secret(self, version: str) -> tuple[int, Any]:
        """Secret Manager's ``versions.access``: the payload, base64-encoded."""
        import base64

        if version not in self.secrets:
            return 404, _error(404, f"Secret Version [{version}] not found or has no versions.", "notFound")
        data = base64.b64encode(self.secrets[version].encode()).decode()
        return 200, {"name": version, "payload": {"data": data}}

    def _upload(self, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        bucket = unquote(path[len("/upload/storage/v1/b/"):].split("/", 1)[0])
        name = query.get("name", "")
        if self.gcs_root is None:
            return 500, "no gcs_root"
        target = self.gcs_root / bucket / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
        return 200, {"bucket": bucket, "name": name}


def _error(code: int, message: str, reason: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message,
                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGCE

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = raw
        if raw and not url.path.startswith("/upload/"):
            try:
                body = json.loads(raw)
            except ValueError:
                pass
        status, payload = self.fake.handle(self.command, url.path, query, body, dict(self.headers.items()))
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = _serve


class GCEServer(LoopbackServer):
    """Serve a :class:`FakeGCE` on a free loopback port; use as a context manager."""

    def __init__(self, fake: FakeGCE | None = None) -> None:
        super().__init__(fake or FakeGCE(), _Handler)
