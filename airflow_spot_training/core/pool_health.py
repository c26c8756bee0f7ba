"""Pool health: which capacity pool (instance type x zone) a launch tries first.

Pure: no Airflow, no cloud SDK. A pool that just reclaimed an attempt, or just had no
capacity, is the likeliest to do it again; so a launch tries it last for a cool-down, and
otherwise prefers the pools that have gone longest without trouble. The operator ranks
its backend's ladder with :meth:`PoolHealthRule.rank` before every spot launch (observations
come from the deployment's shared store and from the run's own ledger); the simulator
ranks the trace's pools with the very same rule.

The rule, for each pool of the configured ladder:

* its *trouble* is the newest reclaim or no-capacity observation within ``window``;
* its *uptime* is the time since that trouble (``window`` when there was none);
* it is *cooling down* while its uptime is below ``cooldown``.

Pools are tried by uptime, longest first: cooling pools come last (the one whose cool-down
ends first before the others), and pools with equal uptime (typically every pool without
trouble) keep the ladder's order. A cooling pool is deprioritized, never excluded: when
every other pool fails, it is still tried.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

#: defaults of ``[spot_training] pool_cooldown`` and ``pool_health_window``, seconds
DEFAULT_COOLDOWN = 1800.0
DEFAULT_WINDOW = 6 * 3600.0
#: observations kept per pool (the newest)
KEEP_PER_POOL = 20

Item = TypeVar("Item")


class PoolEvent(str, enum.Enum):
    """What a pool did to an attempt."""

    RECLAIMED = "reclaimed"
    NO_CAPACITY = "no_capacity"


@dataclass(frozen=True)
class PoolObservation:
    """One thing one pool did, at one instant (epoch seconds, or trace seconds in the simulator)."""

    pool: str
    event: PoolEvent
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "event": self.event.value, "at": self.at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolObservation:
        return cls(pool=str(data["pool"]), event=PoolEvent(data["event"]), at=float(data["at"]))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class PoolStanding:
    """Where one pool stands at ``now``."""

    pool: str
    index: int
    uptime: float
    cooling_for: float
    trouble: PoolObservation | None

    @property
    def cooling(self) -> bool:
        return self.cooling_for > 0

    def describe(self, now: float) -> str:
        if self.trouble is None:
            return f"{self.pool}: no reclaim or capacity miss in the window"
        what = "reclaimed an attempt" if self.trouble.event is PoolEvent.RECLAIMED else "had no capacity"
        text = f"{self.pool}: {what} {_duration(now - self.trouble.at)} ago"
        return text + (f", cooling down for {_duration(self.cooling_for)} more" if self.cooling else "")


@dataclass(frozen=True)
class PoolRanking:
    """The ladder in the order a launch tries it, and why."""

    standings: tuple[PoolStanding, ...]
    now: float

    @property
    def order(self) -> list[str]:
        return [s.pool for s in self.standings]

    @property
    def reordered(self) -> bool:
        return [s.index for s in self.standings] != sorted(s.index for s in self.standings)

    @property
    def reason(self) -> str:
        if not self.standings:
            return "no pools"
        first = self.standings[0]
        if not self.reordered:
            head = f"{first.pool} first, the ladder's order"
        elif first.trouble is None:
            head = f"{first.pool} first: no reclaim or capacity miss in the window"
        else:
            head = f"{first.pool} first: longest uptime ({_duration(first.uptime)})"
        troubled = [s.describe(self.now) for s in self.standings if s.trouble is not None]
        return head + ("; " + "; ".join(troubled) if troubled else "")

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "reason": self.reason}


@dataclass(frozen=True)
class PoolHealthRule:
    """Rank pools from observations: cool-down after trouble, then longest uptime first.

    :param cooldown: seconds a pool is tried last after it reclaimed an attempt or had no
        capacity; ``0`` keeps the uptime preference without a cool-down.
    :param window: seconds of observations that count; older ones are forgotten.
    """

    cooldown: float = DEFAULT_COOLDOWN
    window: float = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.cooldown < 0 or self.window <= 0:
            raise ValueError("the pool cool-down must be >= 0 s and the window > 0 s")

    def rank(self, pools: Sequence[str], observations: Iterable[PoolObservation], now: float) -> PoolRanking:
        troubles = newest_trouble(observations, now - self.window, now)
        standings = []
        for index, pool in enumerate(pools):
            trouble = troubles.get(pool)
            uptime = self.window if trouble is None else min(self.window, now - trouble.at)
            standings.append(PoolStanding(pool=pool, index=index, uptime=uptime,
                                          cooling_for=max(0.0, self.cooldown - uptime), trouble=trouble))
        standings.sort(key=lambda s: (-s.uptime, s.index))
        return PoolRanking(tuple(standings), now)

    def recent(self, observations: Iterable[PoolObservation], now: float) -> list[PoolObservation]:
        """The observations still inside the window, newest last, at most :data:`KEEP_PER_POOL` per pool."""
        kept = sorted({o for o in observations if o.at >= now - self.window}, key=lambda o: (o.at, o.event.value))
        per_pool: dict[str, list[PoolObservation]] = {}
        for observation in kept:
            per_pool.setdefault(observation.pool, []).append(observation)
        return sorted((o for group in per_pool.values() for o in group[-KEEP_PER_POOL:]), key=lambda o: o.at)


def newest_trouble(observations: Iterable[PoolObservation], since: float, now: float) -> dict[str, PoolObservation]:
    """Each pool's newest observation in ``[since, now]``."""
    newest: dict[str, PoolObservation] = {}
    for observation in observations:
        if not since <= observation.at <= now:
            continue
        known = newest.get(observation.pool)
        if known is None or observation.at > known.at:
            newest[observation.pool] = observation
    return newest


def in_order(items: Sequence[Item], order: Sequence[str], name: Callable[[Item], str]) -> list[Item]:
    """``items`` in the order ``order`` names them; items it does not name follow, in their own order."""
    position = {pool: i for i, pool in enumerate(order)}
    return sorted(items, key=lambda item: position.get(name(item), len(position)))
