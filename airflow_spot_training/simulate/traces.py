"""Spot-capacity traces: loading, resampling and cutting windows.

A trace is a list of samples taken every ``gap_seconds``; a sample is true when a spot
instance could be held (it launches, or a running one survives) during that step, false
when there was no capacity (a running instance is preempted).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def traces_dir() -> Path:
    """Where the shared traces live: ``$SPOT_TRACES_DIR``, else ``<project root>/../shared/spot-traces``."""
    env = os.environ.get("SPOT_TRACES_DIR")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "spot-traces"


@dataclass(frozen=True)
class Trace:
    """One pool's availability samples.

    :param name: a label (file path relative to the traces folder, or anything).
    :param gap_seconds: seconds between two samples.
    :param available: one boolean per sample.
    """

    name: str
    gap_seconds: float
    available: tuple[bool, ...]

    @property
    def hours(self) -> float:
        return len(self.available) * self.gap_seconds / 3600

    def resampled(self, step_seconds: float) -> Trace:
        """The trace on a coarser grid: a step is available only if every sample it overlaps is.

        A step that is a whole multiple of the gap is exact; otherwise it is conservative.
        """
        if step_seconds == self.gap_seconds:
            return self
        if step_seconds < self.gap_seconds:
            if (self.gap_seconds / step_seconds) % 1:
                raise ValueError(
                    f"a finer step ({step_seconds} s) must divide the trace gap ({self.gap_seconds} s)"
                )
            k = int(round(self.gap_seconds / step_seconds))
            return Trace(self.name, step_seconds, tuple(a for a in self.available for _ in range(k)))
        n = int(len(self.available) * self.gap_seconds // step_seconds)
        out = []
        for i in range(n):
            lo = int(math.floor(i * step_seconds / self.gap_seconds + 1e-9))
            hi = int(math.ceil((i + 1) * step_seconds / self.gap_seconds - 1e-9))
            out.append(all(self.available[lo:hi]))
        return Trace(self.name, step_seconds, tuple(out))

    def window(self, start: int, length: int, wrap: bool = True) -> list[bool]:
        """``length`` samples from index ``start``; past the end it wraps to the beginning."""
        n = len(self.available)
        if not wrap and start + length > n:
            raise ValueError(f"window {start}+{length} runs past the end of {self.name} ({n} samples)")
        return [self.available[(start + i) % n] for i in range(length)]


def load_trace(path: str | Path, name: str | None = None) -> Trace:
    """Read a ``{"metadata": {"gap_seconds": N}, "data": [...]}`` file."""
    path = Path(path)
    with open(path) as f:
        raw = json.load(f)
    try:
        gap = float(raw["metadata"]["gap_seconds"])
        data = raw["data"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a spot trace: expected metadata.gap_seconds and data ({e})") from e
    return Trace(name or path.name, gap, tuple(bool(v) for v in data))


def find_traces(root: str | Path | None = None) -> list[Path]:
    """Every ``*.json`` trace under ``root`` (default :func:`traces_dir`), sorted."""
    root = Path(root) if root else traces_dir()
    if not root.is_dir():
        raise FileNotFoundError(
            f"no spot traces at {root}; set SPOT_TRACES_DIR or put them at <project root>/../shared/spot-traces"
        )
    return sorted(root.rglob("*.json"))
