"""What a training script imports on the spot machine. No Airflow, no cloud SDK.

* :class:`CheckpointManager`: atomic checkpoints over fsspec.
* :class:`InterruptionWatcher`: SIGTERM and cloud metadata notices -> "checkpoint now".
* :func:`read_contract`: the environment the operator hands every attempt (secrets passed
  by reference resolved into ``os.environ``).
* :func:`write_metrics`: final metrics for the operator's ledger.
* :mod:`airflow_spot_training.runtime.torch_state`: whole PyTorch training state (needs torch),
  saved synchronously or in the background (``save_async``).
* :mod:`airflow_spot_training.runtime.folder_sync`: the synced checkpoint folder's wrapper
  process; :mod:`airflow_spot_training.runtime.checkpoint_folder`: that folder's markers.
* :mod:`airflow_spot_training.runtime.huggingface`, :mod:`airflow_spot_training.runtime.lightning`:
  adapters for Hugging Face ``Trainer`` and PyTorch Lightning (extras ``hf``, ``lightning``).
"""

from airflow_spot_training.core.contract import Contract
from airflow_spot_training.runtime.checkpoint import Checkpoint, CheckpointError, CheckpointManager
from airflow_spot_training.runtime.interruption import InterruptionWatcher
from airflow_spot_training.runtime.results import read_metrics, write_metrics
from airflow_spot_training.runtime.secrets import read_contract

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "Contract",
    "InterruptionWatcher",
    "read_contract",
    "read_metrics",
    "write_metrics",
]
