"""What the redaction of training log lines masks, and what it leaves alone."""

from __future__ import annotations

import pytest

from airflow_spot_training.core.redaction import MASK, redact, redact_lines, secret_values_of, sensitive_name


@pytest.mark.parametrize("line, secret", [
    ("HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123456789 loaded", "hf_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("features at postgresql://trainer:hunter22@db/x", "hunter22"),
    ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl"),
    ("using AKIAIOSFODNN7EXAMPLE for uploads", "AKIAIOSFODNN7EXAMPLE"),
    ('{"password": "pw-123456", "step": 3}', "pw-123456"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"),
    ("token ya29.a0AfH6SMBx3-very-long-google-token-value", "ya29.a0AfH6SMBx3-very-long-google-token-value"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"),
])
def test_recognisable_credentials_are_masked(line: str, secret: str) -> None:
    redacted = redact(line)
    assert secret not in redacted and MASK in redacted


def test_known_values_are_masked_wherever_they_appear() -> None:
    assert redact("key s3cr3t-value, again s3cr3t-value.", ["s3cr3t-value"]) == f"key {MASK}, again {MASK}."


def test_short_known_values_are_not_masked_everywhere() -> None:
    assert redact("step 1 loss 0.5", ["1"]) == "step 1 loss 0.5"


@pytest.mark.parametrize("line", [
    "step 120 loss 0.4312 num_tokens=524288 tokens_per_second: 9120",
    "pad_token: <pad> eos_token: </s>",
    "checkpoint committed at s3://bucket/prefix/step-000000000120",
    "secret_name=projects/p/secrets/hf-token",
])
def test_ordinary_training_output_is_left_alone(line: str) -> None:
    assert redact(line) == line


@pytest.mark.parametrize("name, sensitive", [
    ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("DB_PASSWORD", True), ("accessToken", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("num_tokens", False), ("pad_token", False), ("BATCH_SIZE", False),
])
def test_sensitive_names(name: str, sensitive: bool) -> None:
    assert sensitive_name(name) is sensitive


def test_the_values_of_sensitive_env_entries_are_the_ones_masked_by_value() -> None:
    env = {"WANDB_API_KEY": "wandb-123456", "BATCH_SIZE": "32"}
    assert secret_values_of(env) == ["wandb-123456"]
    assert redact_lines(["batch 32 key wandb-123456"], secret_values_of(env)) == [f"batch 32 key {MASK}"]
