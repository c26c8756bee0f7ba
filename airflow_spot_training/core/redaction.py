"""Redacting a training's log lines before they are shown anywhere else.

A training's output can hold a credential: a token it printed, an exception that quotes a
URL with a password, the value of a secret it was handed. Lines of a training log that the
operator copies into the task log, and lines the machine ships to a log service, go
through :func:`redact` first:

* the values it is told about (``secret_values``: the secrets resolved on the machine,
  the ``env=`` values whose names look sensitive) are replaced wherever they appear;
* credentials recognisable by their shape are replaced whatever their source: AWS access
  key ids, Google OAuth access tokens, Hugging Face and GitHub tokens, bearer tokens,
  passwords in URLs, private key blocks, and the value in ``NAME=value`` / ``"name": value``
  when the name looks sensitive (``token``, ``secret``, ``password``, ...).

Pure: no Airflow, no cloud SDK (the machine-side log shipper uses it too).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

MASK = "***"
#: a name whose value is treated as secret (env names, keys in a log line), matched in lower case
#: against its end: ``HF_TOKEN``, ``db_password``, ``accessToken``, but not ``num_tokens`` nor a
#: tokenizer's ``pad_token``
SENSITIVE_NAME = re.compile(
    r"(?<!bos_)(?<!eos_)(?<!pad_)(?<!unk_)(?<!sep_)(?<!cls_)(?<!mask_)"
    r"(password|passwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|"
    r"private[_-]?key|credentials?|authorization|session[_-]?key|signature|cookie)$"
)
#: shorter values are not masked by value: masking "1" or "abc" everywhere would wreck the log
MIN_SECRET_LENGTH = 5

_KNOWN_SHAPES = [
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key id
    re.compile(r"\bya29\.[0-9A-Za-z_\-]{20,}"),  # Google OAuth access token
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub token
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),  # Slack token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
]
_BEARER = re.compile(r"(\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]{8,}", re.I)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+(@)", re.I)
#: NAME=value, NAME: value, "name": "value" (the name is checked with SENSITIVE_NAME)
_ASSIGNMENT = re.compile(
    r"""(?P<name>["']?[A-Za-z_][A-Za-z0-9_.\-]*["']?)(?P<sep>\s*[=:]\s*)(?P<quote>["']?)(?P<value>[^\s"',;}]+)"""
)


def sensitive_name(name: str) -> bool:
    """Whether a variable or key named ``name`` holds a secret by its name."""
    return bool(SENSITIVE_NAME.search(name.lower()))


def secret_values_of(env: Mapping[str, object]) -> list[str]:
    """The values in ``env`` whose names look sensitive (what to mask by value)."""
    return [str(value) for name, value in env.items() if sensitive_name(name) and value is not None]


def redact(text: str, secret_values: Iterable[str] = ()) -> str:
    """``text`` with every known secret value and every recognisable credential masked."""
    for value in sorted({v for v in secret_values if v and len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(value, MASK)
    for shape in _KNOWN_SHAPES:
        text = shape.sub(MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(2), text)
    return _ASSIGNMENT.sub(_mask_assignment, text)


def redact_lines(lines: Iterable[str], secret_values: Iterable[str] = ()) -> list[str]:
    values = list(secret_values)
    return [redact(line, values) for line in lines]


def _mask_assignment(match: re.Match[str]) -> str:
    name = match.group("name").strip("\"'")
    if not sensitive_name(name) or match.group("value") == MASK:
        return match.group(0)
    return f"{match.group('name')}{match.group('sep')}{match.group('quote')}{MASK}"
