"""A fake Cloud Logging JSON API (``entries.list``) on 127.0.0.1, for the real google-cloud-logging client.

A Google cloud sends what a VM's startup script or a Vertex AI job prints to Cloud
Logging by itself; the fake does the same from the machine's console: a test registers,
per monitored resource (``gce_instance`` by VM name, ``ml_job`` by job id), a function
returning the text that machine printed so far, and ``POST /v2/entries:list`` answers
with one entry per non-empty line, newest first when asked ``timestamp desc``.

Filters understood: ``resource.type="..."``, ``labels."compute.googleapis.com/resource_name"="..."``,
``resource.labels.job_id="..."``, joined by ``AND``; a ``timestamp>=...`` term (the
client adds one) is accepted and ignored.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from tests.fakes.loopback import LoopbackServer

TERM = re.compile(r'([\w."/\-]+?)\s*=\s*"([^"]*)"')
RESOURCE_NAME_LABEL = 'labels."compute.googleapis.com/resource_name"'


class FakeCloudLogging:
    def __init__(self, project: str = "test-project") -> None:
        self.project = project
        self.sources: dict[tuple[str, str], Callable[[], str]] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def register(self, resource_type: str, key: str, text: Callable[[], str]) -> None:
        """What the machine behind (``gce_instance``, VM name) or (``ml_job``, job id) printed."""
        with self.lock:
            self.sources[(resource_type, key)] = text

    def list_entries(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.requests.append(body)
            terms = dict(TERM.findall(body.get("filter", "")))
            resource_type = terms.get("resource.type", "")
            key = terms.get(RESOURCE_NAME_LABEL) or terms.get("resource.labels.job_id") or ""
            source = self.sources.get((resource_type, key))
        lines = [line for line in (source() if source else "").splitlines() if line.strip()]
        entries = [self._entry(resource_type, key, index, line) for index, line in enumerate(lines)]
        if "desc" in body.get("orderBy", ""):
            entries.reverse()
        return {"entries": entries[: int(body.get("pageSize") or 1000)]}

    def _entry(self, resource_type: str, key: str, index: int, line: str) -> dict[str, Any]:
        labels = {"job_id": key} if resource_type == "ml_job" else {"instance_id": "1", "zone": "us-central1-a"}
        entry = {
            "logName": f"projects/{self.project}/logs/"
                       + ("workerpool0-0" if resource_type == "ml_job" else "google_metadata_script_runner"),
            "resource": {"type": resource_type, "labels": labels},
            "textPayload": line,
            "insertId": f"{key}-{index}",
            "timestamp": datetime.fromtimestamp(1_700_000_000 + index, timezone.utc).isoformat().replace("+00:00", "Z"),
        }
        if resource_type == "gce_instance":
            entry["labels"] = {"compute.googleapis.com/resource_name": key}
        return entry


class _Handler(BaseHTTPRequestHandler):
    fake: FakeCloudLogging

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - the http.server spelling
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path.split("?")[0] == "/v2/entries:list":
            status, payload = 200, self.fake.list_entries(body)
        else:
            status, payload = 404, {"error": {"code": 404, "message": f"{self.path} not found", "status": "NOT_FOUND"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class CloudLoggingServer(LoopbackServer):
    """Serve a :class:`FakeCloudLogging` on a free loopback port; use as a context manager."""

    def __init__(self, fake: FakeCloudLogging | None = None) -> None:
        super().__init__(fake or FakeCloudLogging(), _Handler)
