"""Where a deployment's pool observations live: Airflow Variables, one per pool.

Every task of the deployment reads and writes the same Variables (in the metadata
database, through the task SDK), so a fleet of trainings learns together: a pool one task
saw reclaimed is tried last by the next launch of any other task. Only the worker
touches it (sync, at launch and after an attempt ended); the triggerer never does.

One Variable per pool (``spot_training_pool_health:<scope>:<pool>``, a JSON object with
the pool's recent observations) keeps concurrent writers apart unless they write about
the same pool at the same moment; then one observation may be lost, which costs at most
one launch in a pool that was cooling down. A store that cannot be reached (no task
runner, an API error) is reported once and the run's own ledger still informs the ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_spot_training.core.pool_health import PoolHealthRule, PoolObservation

log = logging.getLogger(__name__)

VARIABLE_PREFIX = "spot_training_pool_health"
STORE_VERSION = 1


def variable_key(scope: str, pool: str) -> str:
    return f"{VARIABLE_PREFIX}:{scope}:{pool}"[:250]


class PoolHealthStore:
    """Read and add pool observations of one scope (a backend kind and what makes its pools comparable).

    :param scope: e.g. ``ec2:us-east-1`` or ``compute_engine:n1-standard-8``.
    :param rule: the rule whose window decides what is kept.
    """

    def __init__(self, scope: str, rule: PoolHealthRule) -> None:
        self.scope = scope
        self.rule = rule
        self._unreachable = False

    def _warn(self, action: str, error: Exception) -> None:
        if not self._unreachable:
            log.warning("pool health: cannot %s the shared observations (Airflow Variables %s:%s:*): %s; this "
                        "task ranks pools from its own attempts only", action, VARIABLE_PREFIX, self.scope, error)
        self._unreachable = True

    def _read(self, pool: str) -> list[PoolObservation]:
        from airflow.sdk import Variable

        value = Variable.get(variable_key(self.scope, pool), default=None, deserialize_json=True)
        if not isinstance(value, dict) or value.get("version") != STORE_VERSION:
            return []
        out = []
        for item in value.get("observations") or []:
            try:
                observation = PoolObservation.from_dict(item)
            except (KeyError, TypeError, ValueError):
                continue  # an entry written by hand or by a newer provider: skipped
            if observation.pool == pool:
                out.append(observation)
        return out

    def observations(self, pools: Sequence[str]) -> list[PoolObservation]:
        """Every pool's recorded observations; none when the store is unreachable."""
        if self._unreachable:
            return []
        out: list[PoolObservation] = []
        try:
            for pool in pools:
                out.extend(self._read(pool))
        except Exception as e:
            self._warn("read", e)
            return []
        return out

    def add(self, observations: Iterable[PoolObservation], now: float) -> None:
        """Append observations (the pool's old ones beyond the window are dropped)."""
        if self._unreachable:
            return
        from airflow.sdk import Variable

        by_pool: dict[str, list[PoolObservation]] = {}
        for observation in observations:
            by_pool.setdefault(observation.pool, []).append(observation)
        try:
            for pool, new in by_pool.items():
                kept = self.rule.recent(self._read(pool) + new, now)
                value: dict[str, Any] = {"version": STORE_VERSION, "observations": [o.to_dict() for o in kept]}
                Variable.set(variable_key(self.scope, pool), value, serialize_json=True,
                             description="spot-training pool health (written by SpotTrainingOperator)")
        except Exception as e:
            self._warn("write", e)
