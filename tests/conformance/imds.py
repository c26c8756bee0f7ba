"""A loopback EC2 instance metadata service (IMDSv2) for many fake instances at once.

Each instance reaches it under its own base URL, ``http://127.0.0.1:PORT/<instance-id>``
(``SPOT_TRAINING_IMDS_URL``): ``PUT /latest/api/token`` returns a token;
``GET /latest/meta-data/spot/instance-action`` answers 404 until :meth:`FakeIMDS.notice`
schedules the interruption, then 200 with ``{"action": "terminate", "time": ...}``, as
EC2 does about two minutes before a reclaim; ``/latest/meta-data/instance-id`` names the
instance. Machines of other clouds get a base URL no instance owns: always 404.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "imds-token"


class FakeIMDS:
    def __init__(self) -> None:
        self.notices: dict[str, str] = {}
        self.instances: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                instance, path = fake._split(self.path)
                fake.requests.append(("PUT", self.path))
                if instance in fake.instances and path == "/latest/api/token":
                    self._send(200, TOKEN)
                else:
                    self._send(404, "")

            def do_GET(self) -> None:
                instance, path = fake._split(self.path)
                fake.requests.append(("GET", self.path))
                code, body = fake.answer(instance, path, self.headers.get("X-aws-ec2-metadata-token"))
                self._send(code, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        _, instance, rest = path.split("/", 2) if path.count("/") >= 2 else ("", "", "")
        return instance, "/" + rest

    def answer(self, instance: str, path: str, token: str | None) -> tuple[int, str]:
        if instance not in self.instances:
            return 404, ""
        if token != TOKEN:
            return 401, ""
        if path == "/latest/meta-data/instance-id":
            return 200, instance
        if path == "/latest/meta-data/spot/instance-action":
            when = self.notices.get(instance)
            return (200, json.dumps({"action": "terminate", "time": when})) if when else (404, "")
        return 404, ""

    def base_url(self, instance: str | None) -> str:
        """The metadata URL of ``instance``; ``None``: a machine of another cloud (always 404)."""
        if instance is None:
            return f"{self.url}/no-instance"
        self.instances.add(instance)
        return f"{self.url}/{instance}"

    def notice(self, instance: str, seconds_ahead: float = 120.0) -> None:
        """Schedule the reclaim of ``instance``: the instance-action document appears."""
        self.notices[instance] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_ahead))

    def __enter__(self) -> FakeIMDS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
