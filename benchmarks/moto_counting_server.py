"""A moto server for the trigger benchmark: counts DescribeInstances and makes terminations reclaims.

``python -m benchmarks.moto_counting_server PORT COUNT_FILE``

* every DescribeInstances call appends one byte to COUNT_FILE (its size is the count),
  whatever client made it;
* TerminateInstances leaves the state reason EC2 shows after a spot reclaim
  (``Server.SpotInstanceTermination``), so the benchmark can reclaim N instances in
  one API call (moto cannot reclaim spot capacity by itself); a DescribeInstances served
  meanwhile waits for it, so no poller sees moto's own reason in between. When a call's
  reclaim is done, its instance ids and that moment (``time.monotonic()``, one clock for
  every process of the machine) go to COUNT_FILE.reclaims, one line each.
* every DescribeInstances with instance ids notes, in COUNT_FILE.reads, when it read the
  instances' states (the moment its answer was decided), how long it first waited for a
  reclaim in progress, and its ids: ``READ WAITED ID,ID,...``. A reclaim done after a call's
  read can only be seen by the next call for that instance, so the benchmark can tell the
  longest a reclaim could have waited (see :mod:`benchmarks.ec2_triggers`).

* DescribeInstances with instance ids finds them through a set, not by scanning every
  reservation for every id (moto's own lookup is O(ids x instances): at 5,000 instances,
  most of a 1,000-id call). The answer is the same.

It runs in its own process so the benchmarked triggerer's CPU figures do not include
moto's work.
"""

from __future__ import annotations

import os
import sys
import threading
import time


class Log:
    """The files the benchmark reads, and the lock a reclaim holds while moto makes it."""

    def __init__(self, count_file: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.calls = os.open(count_file, flags)
        self.reclaims = os.open(f"{count_file}.reclaims", flags)
        self.reads = os.open(f"{count_file}.reads", flags)
        self.reclaiming = threading.Lock()


def counted(log: Log, original, note_reads: bool = False):  # type: ignore[no-untyped-def]
    """DescribeInstances: counted, and never in the middle of a reclaim. ``note_reads`` (the lookup by
    ids, whose first argument is the ids): its read is noted with how long it waited behind a reclaim."""
    def describe(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        os.write(log.calls, b"D")
        asked = time.monotonic()
        with log.reclaiming:
            waited = time.monotonic() - asked
            try:
                return original(self, *args, **kwargs)
            finally:
                if note_reads:
                    line = f"{time.monotonic():.6f} {waited:.6f} {','.join(args[0])}\n"
                    os.write(log.reads, line.encode())
    return describe


def reclaiming_terminate(log: Log, terminate):  # type: ignore[no-untyped-def]
    """TerminateInstances as a spot reclaim: EC2's reason for it, and when it was done."""
    from moto.ec2.models.instances import StateReason

    def reclaim(self, instance_ids):  # type: ignore[no-untyped-def]
        with log.reclaiming:
            result = terminate(self, instance_ids)
            for instance_id in instance_ids:
                self.get_instance(instance_id).state_reason = StateReason(
                    "Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination")
            done = time.monotonic()
        os.write(log.reclaims, "".join(f"{instance_id} {done:.6f}\n" for instance_id in instance_ids).encode())
        return result
    return reclaim


def reservations_by_ids(self, instance_ids, filters=None):  # type: ignore[no-untyped-def]
    """moto's lookup by ids, through a set: the same answer."""
    from moto.ec2.exceptions import InvalidInstanceIdError
    from moto.ec2.utils import filter_reservations

    wanted, reservations = set(instance_ids), []
    for reservation in self.all_reservations():  # copies, as moto's own lookup returns
        matching = [instance for instance in reservation.instances if instance.id in wanted]
        if matching:
            reservation.instances = matching
            reservations.append(reservation)
    missing = wanted - {instance.id for reservation in reservations for instance in reservation.instances}
    if missing:
        raise InvalidInstanceIdError(sorted(missing)[0])
    return filter_reservations(reservations, filters) if filters is not None else reservations


def main() -> None:
    port, count_file = int(sys.argv[1]), sys.argv[2]
    from moto.ec2.models.instances import InstanceBackend
    from moto.server import ThreadedMotoServer

    log = Log(count_file)
    # the methods replaced, moto's own
    assert InstanceBackend.get_reservations_by_instance_ids.__name__ == "get_reservations_by_instance_ids"
    InstanceBackend.get_reservations_by_instance_ids = counted(log, reservations_by_ids, note_reads=True)
    InstanceBackend.describe_instances = counted(log, InstanceBackend.describe_instances)
    InstanceBackend.terminate_instances = reclaiming_terminate(log, InstanceBackend.terminate_instances)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()  # runs until the benchmark closes our stdin
    server.stop()


if __name__ == "__main__":
    main()
