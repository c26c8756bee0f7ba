"""Trace-driven simulation of escalation policies, and the offline optimum they are measured against.

Outside the pure core: the optimum uses numpy. The policies it drives are the production
ones from :mod:`airflow_spot_training.core.policies`.
"""

from airflow_spot_training.simulate.simulator import (
    ON_DEMAND_PRICE,
    SPOT_PRICE,
    SimResult,
    on_demand_only_cost,
    simulate,
)
from airflow_spot_training.simulate.traces import Trace, find_traces, load_trace, traces_dir

__all__ = [
    "ON_DEMAND_PRICE",
    "SPOT_PRICE",
    "SimResult",
    "Trace",
    "find_traces",
    "load_trace",
    "on_demand_only_cost",
    "simulate",
    "traces_dir",
]
