"""A genuine training failure: the training exits 3 at once (after reading its contract)."""

from __future__ import annotations

import sys

from airflow_spot_training.runtime import read_contract

if __name__ == "__main__":
    contract = read_contract()
    print(f"attempt {contract.attempt}: failing on purpose", flush=True)
    sys.exit(3)
