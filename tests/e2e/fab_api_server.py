"""A second api-server on the e2e cluster's database, with the FAB auth manager.

The cluster's own api-server uses the compose file's SimpleAuthManager, which has roles
but no per-DAG permissions. To test that a user without access to a DAG sees none of
its runs, this one runs with ``FabAuthManager`` (``apache-airflow-providers-fab``, in
the dev extra), whose roles grant ``can_read`` on single DAGs (``DAG:<dag_id>``). It
serves the same metadata DB, so it sees the same runs and ledgers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from typing import Any

import requests

from tests.e2e.airflow_cluster import AirflowCluster, free_port

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

# Creates roles with the given permissions and users with the given roles (FAB's own API).
USERS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
    spec = json.loads(sys.argv[1])
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        sm.sync_roles()
        for name, permissions in spec["roles"].items():
            role = sm.find_role(name) or sm.add_role(name)
            for action, resource in permissions:
                sm.add_permission_to_role(role, sm.create_permission(action, resource))
        for user in spec["users"]:
            sm.add_user(user["username"], user["username"], "e2e", user["username"] + "@example.com",
                        sm.find_role(user["role"]), password=user["password"])
    """
)


class FabApiServer:
    """Start and stop an api-server with the FAB auth manager next to a running cluster.

    :param cluster: the running cluster whose database and environment are shared.
    :param roles: role name -> ``[(action, resource), ...]`` (e.g. ``("can_read", "DAG:my_dag")``).
    :param users: ``[{"username", "password", "role"}, ...]``.
    """

    def __init__(self, cluster: AirflowCluster, roles: dict[str, list[tuple[str, str]]],
                 users: list[dict[str, str]]) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**cluster.env, "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER}
        self.roles, self.users = roles, users
        self.proc: subprocess.Popen | None = None
        self.log = cluster.logs / "api-server-fab.log"

    def _run(self, args: list[str]) -> None:
        with open(self.log, "ab") as log:
            subprocess.run(args, env=self.env, cwd=str(self.cluster.work_dir), stdout=log,
                           stderr=subprocess.STDOUT, check=True, timeout=300)

    def __enter__(self) -> FabApiServer:
        airflow = str(self.cluster.bin / "airflow")
        self._run([airflow, "fab-db", "migrate"])
        self._run([str(self.cluster.bin / "python"), "-c", USERS_SCRIPT,
                   json.dumps({"roles": self.roles, "users": self.users})])
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--workers", "1"], env=self.env, cwd=str(self.cluster.work_dir),
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        try:
            self.cluster.wait_until(self._up, 180, "the FAB api-server to answer", every=1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the FAB api-server exited {self.proc.returncode}; log: {self.log}")
        try:
            return requests.get(f"{self.base_url}/api/v2/version", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the process group this server leads
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def token(self, username: str) -> str:
        password = next(u["password"] for u in self.users if u["username"] == username)
        r = requests.post(f"{self.base_url}/auth/token", json={"username": username, "password": password},
                          timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]
