"""Ship the training's log on an EC2 instance to a CloudWatch Logs stream, redacted.

::

    python3 -m airflow_spot_training.bootstrap.cloudwatch_logs --file /var/log/spot-training.log \\
        --group /spot-training/my-dag --stream <attempt token> --region us-east-1 [--redact-env HF_TOKEN,...]

Started by the EC2 bootstrap (``bootstrap/ec2_user_data.sh``) when the backend has
``log_group=``. It follows ``--file`` from its first byte and sends the new lines every
``--interval`` seconds; on SIGTERM (the bootstrap's end, or the machine shutting down on a
reclaim) it sends what is left and exits. Before a line leaves the machine, the values of
the variables named in ``--redact-env`` (the resolved secrets, sensitive ``env=`` entries)
and every recognisable credential are masked (:mod:`airflow_spot_training.core.redaction`).

Needs python3 with boto3 on the AMI, and ``logs:CreateLogStream`` + ``logs:PutLogEvents``
on the group for the instance profile. The group must exist (create it once, with the
retention you want).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any, Iterator

from airflow_spot_training.core.redaction import redact

#: PutLogEvents limits: 10,000 events and 1,048,576 bytes per call (26 bytes of overhead per event)
MAX_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_MESSAGE_BYTES = 256 * 1024 - EVENT_OVERHEAD
#: lines kept for a retry while CloudWatch refuses them (the oldest go first)
MAX_PENDING_LINES = 50_000


def batches(events: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``events`` in PutLogEvents-sized chunks."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for event in events:
        event_size = len(event["message"].encode()) + EVENT_OVERHEAD
        if chunk and (len(chunk) >= MAX_EVENTS or size + event_size > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(event)
        size += event_size
    if chunk:
        yield chunk


class FileFollower:
    """The complete lines appended to a file since the last call (the file may appear late)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self, *, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = b"" if final else lines.pop()
        return [line.decode(errors="replace") for line in lines if line.strip()]


class Shipper:
    """Sends redacted lines to one log stream (created on first use)."""

    def __init__(self, client: Any, group: str, stream: str, secret_values: list[str]) -> None:
        self.client = client
        self.group = group
        self.stream = stream
        self.secret_values = secret_values
        self._stream_ready = False

    def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        try:
            self.client.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
        except self.client.exceptions.ResourceAlreadyExistsException:
            pass
        self._stream_ready = True

    def send(self, lines: list[str]) -> None:
        if not lines:
            return
        self._ensure_stream()
        now = int(time.time() * 1000)
        events = [{"timestamp": now, "message": redact(line, self.secret_values)[:MAX_MESSAGE_BYTES]}
                  for line in lines]
        for chunk in batches(events):
            self.client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=chunk)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m airflow_spot_training.bootstrap.cloudwatch_logs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--region", default=None)
    parser.add_argument("--redact-env", default="", help="comma-separated names of variables whose values to mask")
    parser.add_argument("--interval", type=float, default=2.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # first: the bootstrap may end it at any time
    args = parse_args(argv)
    import boto3
    from botocore.config import Config

    client = boto3.client("logs", region_name=args.region, config=Config(retries={"mode": "standard"}))
    names = [name for name in args.redact_env.split(",") if name]
    shipper = Shipper(client, args.group, args.stream, [os.environ[name] for name in names if os.environ.get(name)])
    follower = FileFollower(args.file)
    pending: list[str] = []
    while True:
        final = stop.wait(args.interval)
        pending = (pending + follower.new_lines(final=final))[-MAX_PENDING_LINES:]
        try:
            shipper.send(pending)
            pending = []
        except Exception as e:  # keep following and retry: the training must not notice
            print(f"[spot-training] shipping the log to CloudWatch failed: {type(e).__name__}: {e}", file=sys.stderr)
        if final:
            return 0


if __name__ == "__main__":
    sys.exit(main())
