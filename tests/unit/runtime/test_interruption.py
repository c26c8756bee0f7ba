"""InterruptionWatcher against loopback servers that answer like AWS IMDSv2 and GCE metadata."""

from __future__ import annotations

import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_spot_training.runtime.interruption import InterruptionWatcher


class FakeMetadata:
    """Answers like the AWS IMDSv2 spot endpoints and the GCE preempted flag."""

    def __init__(self) -> None:
        self.interrupt = False
        self.requests: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                fake.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(200, "TOKEN123")
                else:
                    self._send(400, "")

            def do_GET(self):
                fake.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != "TOKEN123":
                        self._send(401, "")
                    elif fake.interrupt:
                        self._send(200, '{"action": "terminate", "time": "2026-11-22T08:22:00Z"}')
                    else:
                        self._send(404, "")
                elif self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        self._send(403, "")
                    else:
                        self._send(200, "TRUE" if fake.interrupt else "FALSE")
                else:
                    self._send(404, "")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeMetadata:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class TestInterruptionWatcher:
    def test_aws_notice_sets_the_flag(self):
        with FakeMetadata() as fake:
            with InterruptionWatcher(handle_sigterm=False, aws_imds=fake.url, poll_seconds=0.05) as w:
                assert not w.wait(0.3)  # 404s: no interruption scheduled
                fake.interrupt = True
                assert w.wait(5)
            assert w.source == "aws-instance-action"
            assert w.detail == {"action": "terminate", "time": "2026-11-22T08:22:00Z"}
            # IMDSv2: a token was PUT first and then sent with the GET
            assert any(r[0] == "PUT" for r in fake.requests)
            gets = [r for r in fake.requests if r[0] == "GET"]
            assert gets and all(r[2].get("x-aws-ec2-metadata-token") == "TOKEN123" for r in gets)

    def test_gce_preempted_sets_the_flag(self):
        with FakeMetadata() as fake:
            with InterruptionWatcher(handle_sigterm=False, gce_metadata=fake.url, poll_seconds=0.05) as w:
                assert not w.wait(0.3)
                fake.interrupt = True
                assert w.wait(5)
            assert w.source == "gce-preempted"
            assert all(r[2].get("metadata-flavor") == "Google" for r in fake.requests)

    def test_unreachable_endpoint_is_not_an_interruption(self):
        with InterruptionWatcher(handle_sigterm=False, aws_imds="http://127.0.0.1:9", poll_seconds=0.05) as w:
            assert not w.wait(0.3)

    def test_sigterm_sets_the_flag_and_handler_is_restored(self):
        before = signal.getsignal(signal.SIGTERM)
        with InterruptionWatcher() as w:
            os.kill(os.getpid(), signal.SIGTERM)
            assert w.wait(2)
            assert w.source == "sigterm"
        assert signal.getsignal(signal.SIGTERM) == before

    @pytest.mark.parametrize("calls", [2])
    def test_on_notice_called_once(self, calls):
        seen = []
        w = InterruptionWatcher(handle_sigterm=False, on_notice=seen.append)
        for _ in range(calls):
            w.notify("test")
        assert seen == ["test"]

    def test_environment_overrides_the_endpoints_and_the_poll_period(self, monkeypatch):
        with FakeMetadata() as fake:
            monkeypatch.setenv("SPOT_TRAINING_IMDS_URL", fake.url)
            monkeypatch.setenv("SPOT_TRAINING_METADATA_URL", fake.url)
            monkeypatch.setenv("SPOT_TRAINING_NOTICE_POLL_SECONDS", "0.05")
            fake.interrupt = True
            with InterruptionWatcher(handle_sigterm=False, aws_imds=True) as w:
                assert w.poll_seconds == 0.05
                assert w.wait(5)
            assert w.source == "aws-instance-action"
            with InterruptionWatcher(handle_sigterm=False, gce_metadata=True) as w:
                assert w.wait(5)
            assert w.source == "gce-preempted"

    def test_without_overrides_the_real_endpoints_and_five_seconds(self, monkeypatch):
        for name in ("SPOT_TRAINING_IMDS_URL", "SPOT_TRAINING_METADATA_URL", "SPOT_TRAINING_NOTICE_POLL_SECONDS"):
            monkeypatch.delenv(name, raising=False)
        w = InterruptionWatcher(handle_sigterm=False, aws_imds=True, gce_metadata=True)
        assert (w._aws, w._gce, w.poll_seconds) == ("http://169.254.169.254", "http://metadata.google.internal", 5.0)
