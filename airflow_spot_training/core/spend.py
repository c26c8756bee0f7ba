"""The spend cap: what a run has spent, what its next attempt would cost, and whether it may launch.

Pure: no Airflow, no cloud SDK. The operator asks :meth:`SpendCap.refusal` before every
launch, with the spend read from the ledger (which lives in the task state store, so the
figure survives Airflow retries) and the attempt's projected cost.

The projection is deliberately pessimistic: the attempt is assumed to run all the work
that is left (``remaining_work``, from checkpoint progress or ``expected_runtime``) plus
one restart, at the price of the capacity it launches on. A spot attempt whose spot price
is not known before it launches (EC2 learns it only from the instance) is projected at the
on-demand price, which a spot price never exceeds; so a cap is never crossed by a launch
that the projection allowed, unless the work takes longer than estimated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_spot_training.core.policy import Capacity

if TYPE_CHECKING:
    from airflow_spot_training.core.ledger import RunLedger


@dataclass(frozen=True)
class Spend:
    """USD spent so far by a run: all its attempts, all its Airflow tries."""

    total: float
    on_demand: float

    def to_dict(self) -> dict[str, float]:
        return {"total": round(self.total, 6), "on_demand": round(self.on_demand, 6)}


def spend_so_far(ledger: RunLedger, now: float | None = None,
                 prices: Mapping[str, float] | None = None) -> Spend:
    """What the ledger's attempts cost, a running attempt counted up to ``now``.

    An attempt whose own price is unknown is counted at the price a launch on its capacity is
    projected at (:func:`projection_price` of ``prices``, default the ledger's prices per
    capacity: a spot attempt without a spot price at the on-demand price); with no price at
    all it counts as free, and :func:`missing_price` says so before a capped launch.
    """
    known = dict(ledger.prices if prices is None else prices)
    total = on_demand = 0.0
    for attempt in ledger.attempts:
        cost = attempt.cost(now)
        fallback = projection_price(Capacity(attempt.capacity), known)
        if cost is None and fallback is not None:
            seconds = attempt.billable_seconds if attempt.billable_seconds is not None else attempt.seconds(now)
            cost = seconds / 3600.0 * fallback
        cost = cost or 0.0
        total += cost
        if attempt.capacity == Capacity.ON_DEMAND.value:
            on_demand += cost
    return Spend(total=total, on_demand=on_demand)


def projected_attempt_cost(remaining_work: float, restart_overhead: float, price_per_hour: float) -> float:
    """USD one attempt costs if it runs all of ``remaining_work`` seconds after one restart."""
    if remaining_work < 0 or restart_overhead < 0 or price_per_hour < 0:
        raise ValueError("remaining work, restart overhead and price must not be negative")
    return (remaining_work + restart_overhead) / 3600.0 * price_per_hour


def projection_price(capacity: Capacity, prices: Mapping[str, float | None]) -> float | None:
    """The price a launch on ``capacity`` is projected at: its own, else (spot) the on-demand price."""
    own = prices.get(capacity.value)
    if own is not None:
        return float(own)
    if capacity is Capacity.SPOT:
        fallback = prices.get(Capacity.ON_DEMAND.value)
        return None if fallback is None else float(fallback)
    return None


def _usd(value: float) -> str:
    return f"{value:.2f} USD"


@dataclass(frozen=True)
class SpendCap:
    """``max_cost`` (the whole run) and ``max_on_demand_cost`` (its on-demand share), USD; ``None``: no cap."""

    max_cost: float | None = None
    max_on_demand_cost: float | None = None

    @property
    def active(self) -> bool:
        return self.max_cost is not None or self.max_on_demand_cost is not None

    def applies_to(self, capacity: Capacity) -> bool:
        """Whether a launch on ``capacity`` is checked at all."""
        return self.max_cost is not None or (capacity is Capacity.ON_DEMAND and self.max_on_demand_cost is not None)

    def refusal(self, spent: Spend, projected: float, capacity: Capacity, attempt: int) -> str | None:
        """Why attempt ``attempt`` on ``capacity`` may not launch, or ``None`` when it may."""
        what = f"attempt {attempt} on {capacity.value}"
        if self.max_cost is not None and spent.total + projected > self.max_cost:
            return (f"the spend cap refuses to launch {what}: spent {_usd(spent.total)}, projected "
                    f"{_usd(projected)} for this attempt, max_cost {_usd(self.max_cost)} "
                    f"({_usd(spent.total + projected)} would cross it). Nothing was launched; the checkpoints "
                    "are kept. Raise max_cost= to carry on.")
        if (capacity is Capacity.ON_DEMAND and self.max_on_demand_cost is not None
                and spent.on_demand + projected > self.max_on_demand_cost):
            return (f"the spend cap refuses to launch {what}: spent {_usd(spent.on_demand)} on on-demand, "
                    f"projected {_usd(projected)} for this attempt, max_on_demand_cost "
                    f"{_usd(self.max_on_demand_cost)} ({_usd(spent.on_demand + projected)} would cross it). "
                    "Nothing was launched; the checkpoints are kept. Raise max_on_demand_cost= to carry on.")
        return None

    def to_dict(self) -> dict[str, float | None]:
        return {"max_cost": self.max_cost, "max_on_demand_cost": self.max_on_demand_cost}


def missing_price(capacity: Capacity) -> str:
    """The message for a capped launch whose price nobody knows."""
    return (f"a spend cap (max_cost= / max_on_demand_cost=) is set, but no {capacity.value} price is known to "
            "project the attempt's cost: give the backend its prices (on_demand_prices= on EC2, "
            "on_demand_price_per_hour= and spot_price_per_hour= on the other backends). Nothing was launched.")
