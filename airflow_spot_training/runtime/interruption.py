"""Notice that the machine is about to be reclaimed, in time to write a checkpoint.

Three sources, any of which sets the same "checkpoint now" flag:

* SIGTERM (what a local preemption, a container stop, and GCE's shutdown send);
* the AWS IMDSv2 spot ``instance-action`` document (404 until an interruption is
  scheduled, then ``{"action": "terminate", "time": "...Z"}`` about 2 minutes ahead);
* the GCE metadata value ``instance/preempted`` (``TRUE`` once preempted; 30 s notice).

The pollers are plain ``urllib`` loops in daemon threads: no cloud SDK, no Airflow.

The endpoints and the polling period can be overridden through the environment,
which is how tests point the watcher at loopback fakes of the metadata services:

* ``SPOT_TRAINING_IMDS_URL``: base URL used for ``aws_imds=True``;
* ``SPOT_TRAINING_METADATA_URL``: base URL used for ``gce_metadata=True`` (the same
  variable the Compute Engine startup script honours);
* ``SPOT_TRAINING_NOTICE_POLL_SECONDS``: the default of ``poll_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import urllib.error
import urllib.request
from typing import Any, Callable

log = logging.getLogger(__name__)

AWS_IMDS_ENDPOINT = "http://169.254.169.254"
GCE_METADATA_ENDPOINT = "http://metadata.google.internal"
#: environment overrides (see the module docstring)
AWS_IMDS_URL_ENV = "SPOT_TRAINING_IMDS_URL"
GCE_METADATA_URL_ENV = "SPOT_TRAINING_METADATA_URL"
POLL_SECONDS_ENV = "SPOT_TRAINING_NOTICE_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 5.0


class InterruptionWatcher:
    """Sets :attr:`requested` when an interruption notice arrives.

    :param handle_sigterm: install a SIGTERM handler (main thread only).
    :param aws_imds: poll the AWS instance-action notice; ``True`` for the real
        endpoint (or ``$SPOT_TRAINING_IMDS_URL``), or a base URL.
    :param gce_metadata: poll the GCE preempted flag; ``True`` for the real endpoint
        (or ``$SPOT_TRAINING_METADATA_URL``), or a base URL.
    :param poll_seconds: how often the pollers ask (AWS recommends every 5 s; default
        ``$SPOT_TRAINING_NOTICE_POLL_SECONDS`` or 5).
    """

    def __init__(
        self,
        *,
        handle_sigterm: bool = True,
        aws_imds: bool | str = False,
        gce_metadata: bool | str = False,
        poll_seconds: float | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        self._event = threading.Event()
        self.source: str | None = None
        self.detail: dict[str, Any] = {}
        self.poll_seconds = poll_seconds if poll_seconds is not None else _env_poll_seconds()
        self._on_notice = on_notice
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._previous_handler: Any = None
        self._handle_sigterm = handle_sigterm
        self._aws = _endpoint(aws_imds, AWS_IMDS_URL_ENV, AWS_IMDS_ENDPOINT)
        self._gce = _endpoint(gce_metadata, GCE_METADATA_URL_ENV, GCE_METADATA_ENDPOINT)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> InterruptionWatcher:
        if self._handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self._aws:
            self._spawn(self._poll_aws, "spot-notice-aws")
        if self._gce:
            self._spawn(self._poll_gce, "spot-notice-gce")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        for t in self._threads:
            t.join(timeout=self.poll_seconds + 2)

    def __enter__(self) -> InterruptionWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the flag --------------------------------------------------------------------
    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def notify(self, source: str, **detail: Any) -> None:
        if self._event.is_set():
            return
        self.source = source
        self.detail = detail
        self._event.set()
        log.warning("interruption notice from %s %s: checkpoint now", source, detail or "")
        if self._on_notice:
            self._on_notice(source)

    # -- sources ---------------------------------------------------------------------
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.notify("sigterm")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _poll_aws(self) -> None:
        assert self._aws
        base = self._aws.rstrip("/")
        while not self._stop.is_set() and not self.requested:
            try:
                req = urllib.request.Request(
                    f"{base}/latest/api/token",
                    method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    token = resp.read().decode()
                req = urllib.request.Request(
                    f"{base}/latest/meta-data/spot/instance-action",
                    headers={"X-aws-ec2-metadata-token": token},
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    body = json.loads(resp.read().decode() or "{}")
                self.notify("aws-instance-action", action=body.get("action"), time=body.get("time"))
                return
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    log.debug("IMDS answered %s", e.code)
            except (OSError, ValueError) as e:
                log.debug("IMDS not reachable: %s", e)
            self._stop.wait(self.poll_seconds)

    def _poll_gce(self) -> None:
        assert self._gce
        url = f"{self._gce.rstrip('/')}/computeMetadata/v1/instance/preempted"
        while not self._stop.is_set() and not self.requested:
            try:
                req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.read().decode().strip().upper() == "TRUE":
                        self.notify("gce-preempted")
                        return
            except (OSError, ValueError) as e:
                log.debug("GCE metadata not reachable: %s", e)
            self._stop.wait(self.poll_seconds)


def _endpoint(value: bool | str, env_name: str, default: str) -> str | None:
    """The base URL to poll: ``True`` means the environment override, else the real endpoint."""
    if value is True:
        return os.environ.get(env_name) or default
    return value or None


def _env_poll_seconds() -> float:
    raw = os.environ.get(POLL_SECONDS_ENV)
    try:
        return float(raw) if raw else DEFAULT_POLL_SECONDS
    except ValueError:
        log.warning("ignoring %s=%r: not a number of seconds", POLL_SECONDS_ENV, raw)
        return DEFAULT_POLL_SECONDS
