"""The user guide's training, whose metrics are then odd: ``--kind nan`` (NaN and infinity) or ``list``."""

from __future__ import annotations

import sys

from airflow_spot_training.examples import resumable
from airflow_spot_training.runtime import write_metrics


def main() -> int:
    argv = sys.argv[1:]
    kind = "nan"
    if "--kind" in argv:
        at = argv.index("--kind")
        kind = argv[at + 1]
        del argv[at:at + 2]
    code = resumable.main(argv)
    if code == 0:
        odd = {"final_loss": float("nan"), "max_gradient": float("inf")} if kind == "nan" else [1.0, 2.0]
        write_metrics(odd)  # type: ignore[arg-type]
    return code


if __name__ == "__main__":
    sys.exit(main())
