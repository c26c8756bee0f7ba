"""Bootstrap scripts that run the training on a bare cloud machine.

``ec2_user_data.sh`` is the EC2 user-data template: see :func:`render_ec2_user_data`
and ``docs/backends/aws.md`` for the contract it implements.
"""

from __future__ import annotations

import re
import shlex
from importlib import resources

from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.redaction import sensitive_name

EC2_TEMPLATE = "ec2_user_data.sh"
#: EC2 accepts at most 16 KB of user data (before base64)
MAX_USER_DATA_BYTES = 16 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ec2_template() -> str:
    return resources.files(__package__).joinpath(EC2_TEMPLATE).read_text()


def render_ec2_user_data(
    contract: Contract,
    *,
    command: str,
    container_image: str | None = None,
    env: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    shutdown_command: str = "shutdown -h now",
    log_file: str = "/var/log/spot-training.log",
    log_group: str | None = None,
    log_region: str | None = None,
    template: str | None = None,
) -> str:
    """Fill the user-data template for one attempt; every value is shell-quoted.

    :param contract: the attempt's environment contract.
    :param command: the training command (a shell command line), or the container's
        arguments when ``container_image`` is set.
    :param container_image: run this image with ``docker run`` instead of a host command.
    :param env: extra environment variables for the training.
    :param secrets: environment variables to resolve on the instance from AWS Secrets Manager
        (``{name: secret id or ARN}``); only the references are in the user data.
    :param shutdown_command: what ends the machine once the result record is written.
    :param log_file: where the script and the training log to on the instance.
    :param log_group: a CloudWatch Logs group the training's output is shipped to (redacted),
        one stream per attempt named after its token; ``None``: the console output only.
    :param log_region: the group's region.
    :param template: a replacement template with the same ``@@NAME@@`` placeholders.
    """
    env = dict(env or {})
    secrets = dict(secrets or {})
    for name in [*env, *secrets]:
        if not _ENV_NAME.match(name):
            raise ValueError(f"env: {name!r} is not a valid environment variable name")
    values = {
        "CHECKPOINT_URI": contract.checkpoint_uri,
        "ATTEMPT": str(contract.attempt),
        "CAPACITY": contract.capacity,
        "PREEMPTIONS": str(contract.preemptions),
        "RUN_KEY": contract.run_key,
        "RESULT_URI": contract.result_uri,
        "TOKEN": contract.token,
        "INIT_URI": contract.init_uri,
        "COMMAND": command,
        "CONTAINER_IMAGE": container_image or "",
        "SHUTDOWN_COMMAND": shutdown_command,
        "LOG_FILE": log_file,
        "LOG_GROUP": log_group or "",
        "LOG_REGION": log_region or "",
        # values masked before a line is shipped: the resolved secrets, env entries named like secrets
        "REDACT_ENV": ",".join(sorted({*secrets, *(name for name in env if sensitive_name(name))})),
    }
    text = template if template is not None else ec2_template()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", shlex.quote(value))
    text = text.replace("@@EXTRA_ENV@@", "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())))
    text = text.replace("@@SECRETS@@", "\n".join(
        f'{k}="$(resolve_secret {shlex.quote(ref)})" || {{ log "could not resolve secret {k}"; }}; export {k}'
        for k, ref in sorted(secrets.items())))
    pattern = "|".join(f"{re.escape(k)}=" for k in sorted({**env, **secrets})) or "SPOT_TRAINING_"
    text = text.replace("@@EXTRA_ENV_PATTERN@@", pattern)
    size = len(text.encode())
    if size > MAX_USER_DATA_BYTES:
        raise ValueError(f"the rendered user data is {size} bytes; EC2 accepts at most {MAX_USER_DATA_BYTES}")
    return text
