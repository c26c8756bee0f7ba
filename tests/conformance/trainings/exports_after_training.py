"""The user guide's training, then a post-training step (exporting the model) that honours notices.

When this run trained at least one step, it prints ``exporting the model`` and works on
the export for up to ``--export-seconds`` inside an ``InterruptionWatcher``; a notice
then ends it with exit code 143, as the guide's pattern does. By then the final step is
committed and the metrics are written: the training is complete.
"""

from __future__ import annotations

import sys

from airflow_spot_training.examples import resumable
from airflow_spot_training.runtime import CheckpointManager, InterruptionWatcher, read_contract


def main() -> int:
    argv = sys.argv[1:]
    export_seconds = 30.0
    if "--export-seconds" in argv:
        at = argv.index("--export-seconds")
        export_seconds = float(argv[at + 1])
        del argv[at:at + 2]
    args = resumable.parse_args(argv)
    before = resumable.restore(CheckpointManager(read_contract().checkpoint_uri))["step"]
    code = resumable.main(argv)
    if code != 0 or before >= args.steps:
        return code
    with InterruptionWatcher(aws_imds=True) as watcher:
        print("exporting the model", flush=True)
        if watcher.wait(export_seconds):
            print("interrupted while exporting", flush=True)
            return resumable.EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
