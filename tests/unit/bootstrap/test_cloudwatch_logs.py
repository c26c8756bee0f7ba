"""The EC2 log shipper, run as the bootstrap runs it, against the moto server on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from airflow_spot_training.bootstrap.cloudwatch_logs import MAX_BATCH_BYTES, FileFollower, batches
from tests.aws_cloud import REGION

GROUP = "/spot-training/unit"


def test_the_follower_returns_complete_lines_and_the_partial_one_at_the_end(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    follower = FileFollower(str(log))
    assert follower.new_lines() == []  # the file is not there yet
    log.write_text("step 1\nstep 2\nstep")
    assert follower.new_lines() == ["step 1", "step 2"]
    with open(log, "a") as out:
        out.write(" 3\n\nstep 4")
    assert follower.new_lines() == ["step 3"]
    assert follower.new_lines(final=True) == ["step 4"]


def test_batches_respect_the_put_log_events_size_limit() -> None:
    events = [{"timestamp": 1, "message": "x" * 100_000} for _ in range(25)]
    chunks = list(batches(events))
    assert sum(len(chunk) for chunk in chunks) == 25
    assert all(sum(len(e["message"]) + 26 for e in chunk) <= MAX_BATCH_BYTES for chunk in chunks)


def test_the_shipper_sends_every_line_redacted_and_flushes_on_sigterm(aws: dict[str, Any], tmp_path: Path) -> None:
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName=GROUP)
    log = tmp_path / "training.log"
    log.write_text("step 1 loss 1.0\n")
    env = {**os.environ, "HF_TOKEN": "hf-value-0123456789"}
    shipper = subprocess.Popen(
        [sys.executable, "-m", "airflow_spot_training.bootstrap.cloudwatch_logs", "--file", str(log),
         "--group", GROUP, "--stream", "token-a1", "--region", REGION, "--redact-env", "HF_TOKEN",
         "--interval", "0.1"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_events(logs, 1)
        with open(log, "a") as out:
            out.write("printing the token hf-value-0123456789 and password=hunter2-pw\nlast line, no newline")
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(30) == 0, shipper.stderr.read() if shipper.stderr else ""
    finally:
        shipper.kill()
    messages = [event["message"] for event in logs.get_log_events(
        logGroupName=GROUP, logStreamName="token-a1", startFromHead=True)["events"]]
    assert messages == ["step 1 loss 1.0", "printing the token *** and password=***", "last line, no newline"]


def test_a_missing_group_is_reported_without_stopping_the_training(aws: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    log.write_text("step 1\n")
    shipper = subprocess.Popen(
        [sys.executable, "-m", "airflow_spot_training.bootstrap.cloudwatch_logs", "--file", str(log),
         "--group", "/no/such/group", "--stream", "s", "--region", REGION, "--interval", "0.1"],
        stderr=subprocess.PIPE, text=True)
    try:
        said = shipper.stderr.readline() if shipper.stderr else ""  # the first try, reported
        assert "shipping the log to CloudWatch failed: ResourceNotFoundException" in said
        assert shipper.poll() is None  # still following, to try again
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(30) == 0
    finally:
        shipper.kill()


def _wait_for_events(logs: Any, count: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            found = logs.get_log_events(logGroupName=GROUP, logStreamName="token-a1")["events"]
        except logs.exceptions.ResourceNotFoundException:
            found = []
        if len(found) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"the shipper sent fewer than {count} events in 30 s")
