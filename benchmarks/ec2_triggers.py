"""N concurrent EC2 trainings in one triggerer: ours (shared DescribeInstances) against the peer.

Usage::

    python -m benchmarks.ec2_triggers --n 1000 5000 --interval 5 --window 3 --sample 50
    python -m benchmarks.ec2_triggers --n 1000 5000 --reclaim 0   # every instance at once

For each N, and for each side - ``ours`` (``SpotTrainingTrigger`` with
``EC2SpotBackend``) and ``peer`` (the Amazon provider's ``EC2StateSensorTrigger``) -
a fresh worker process starts a moto server process on a free loopback port
(:mod:`benchmarks.moto_counting_server`), launches N instances, runs N triggers in
one asyncio event loop the way a triggerer does, and measures over ``--window``
poll intervals:

* DescribeInstances calls per interval (counted by the server; target ceil(N / 1000));
* CPU seconds per trigger per interval (the worker process's CPU time), and moto's
  CPU (its own process) per interval and per DescribeInstances call;
* status checks per trigger per interval, and the wall time of our shared call.

Then it reclaims ``--reclaim`` of the N instances (default 100: the sampled trainings and
others spread over the N, so over every shared call; 0 reclaims all N at once), 1000 per
TerminateInstances call (the server notes when each one is reclaimed), ours just after a
tick's calls are back (the worst phase: only the next tick can see it), and times, per
reclaimed training (median / p95 / max):

* reclaim -> detection (ours): the shared DescribeInstances returned the instance ended;
* reclaim -> event: the trigger yielded its TriggerEvent;
* event -> launch request: for ``--sample`` trainings the worker's path on the event,
  run one at a time as each task's own worker would. Ours: the sampled trainings were
  launched by the real ``EC2SpotTrainingOperator.execute`` and deferred; their
  ``execute_complete`` runs against moto until the operator calls the backend's
  ``launch`` for the next attempt. The peer's sensor only ends its task; its relaunch is
  an ``EC2CreateInstanceOperator.execute`` (timed whole, RunInstances included);
* reclaim -> launch request = that training's reclaim -> event + event -> launch request.
  Airflow's own hand-over (triggerer -> database -> scheduler -> worker) is not in it;
* the worst phase (ours): how long each reclaim would have waited had it come just after the
  last call that read its instance's state (the server notes every call's read): from that
  read to our detection, less any wait of the seeing call behind moto's reclaim. Then worst
  phase -> launch request = its maximum + the slowest detection -> event + the slowest
  event -> launch request, which the target (the interval + 1 s) is held against.

Both sides use the same moto server build, N, interval and machine, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# =========================================================================================
# worker: one side, one N
# =========================================================================================
def peer_triggers(instance_ids: list[str], interval: float) -> list[Any]:
    from airflow.providers.amazon.aws.triggers.ec2 import EC2StateSensorTrigger

    return [EC2StateSensorTrigger(instance_id=i, target_state="terminated", aws_conn_id="aws_default",
                                  region_name=REGION, poll_interval=interval) for i in instance_ids]


def our_triggers(instance_ids: list[str], interval: float) -> list[Any]:
    """Triggers for instances launched in bulk (not through an operator), as the operator defers them."""
    from airflow_spot_training.backends.ec2 import EC2Handle, EC2SpotBackend
    from airflow_spot_training.triggers.spot_training import SpotTrainingTrigger

    classpath, kwargs = EC2SpotBackend("train", image_id="ami-0", instance_types=["c5.large"], region_name=REGION,
                                       describe_interval=interval).serialize()
    return [SpotTrainingTrigger(
        backend_classpath=classpath, backend_kwargs=kwargs, attempt=1, poll_interval=interval,
        progress_log_interval=3600, checkpoint_prefix=f"s3://bench/ckpt/{i}", version=2,
        handle=EC2Handle(backend="ec2", instance_id=i, token=i, attempt=1, capacity="spot", launched_at=time.time(),
                         region=REGION, result_uri=f"s3://bench/ckpt/{i}/_results/attempt-1.json").to_dict(),
    ) for i in instance_ids]


class Training:
    """One sampled training driven through the real operator: its first try launches and defers,
    and on its trigger's event ``execute_complete`` runs to the next launch request."""

    def __init__(self, number: int, image_id: str, interval: float) -> None:
        from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
        from tests.spot_harness import JsonFileStateStore, TryInstance

        self.ti = TryInstance(1, run_id=f"bench__{number}")
        self.context: dict[str, Any] = {"ti": self.ti, "task_state_store": JsonFileStateStore(
            Path(tempfile.mkdtemp()) / "state.json")}
        self.operator = EC2SpotTrainingOperator(
            task_id="train", command="true", image_id=image_id, instance_types=["c5.large"], region_name=REGION,
            checkpoint_prefix=f"s3://bench/ckpt/sampled-{number}", poll_interval=interval,
            progress_log_interval=3600, max_preemptions=10)
        self.launch_requested: list[float] = []
        launch = self.operator.backend.launch

        def timed_launch(request: Any) -> Any:  # instrument only: when the operator asks for a launch
            self.launch_requested.append(time.monotonic())
            return launch(request)

        object.__setattr__(self.operator.backend, "launch", timed_launch)

    def start(self) -> Any:
        """The first try up to its deferral; the trigger, rebuilt from ``serialize()`` as a triggerer does."""
        from airflow.sdk.exceptions import TaskDeferred

        from tests.spot_harness import rebuild

        try:
            self.operator.execute(self.context)
        except TaskDeferred as deferred:
            return rebuild(deferred.trigger)
        raise RuntimeError("the operator did not defer")

    def resume(self, payload: dict[str, Any]) -> float:
        """``execute_complete`` with the trigger's event: seconds from its start to the next launch request."""
        from airflow.sdk.exceptions import TaskDeferred

        started = time.monotonic()
        try:
            self.operator.execute_complete(self.context, payload)
        except TaskDeferred:  # the new attempt launched and deferred again
            pass
        if len(self.launch_requested) != 2:
            raise RuntimeError(f"expected one relaunch, saw {len(self.launch_requested) - 1}")
        return self.launch_requested[1] - started


def peer_relaunch_seconds(image_id: str) -> float:
    """The peer's way to relaunch after its sensor fired: EC2CreateInstanceOperator.execute, timed whole."""
    from airflow.providers.amazon.aws.operators.ec2 import EC2CreateInstanceOperator

    from tests.spot_harness import TryInstance

    started = time.monotonic()
    EC2CreateInstanceOperator(task_id="relaunch", image_id=image_id, region_name=REGION,
                              config={"InstanceType": "c5.large"}).execute({"ti": TryInstance(1)})
    return time.monotonic() - started


def active_coordinators() -> list[Any]:
    from airflow_spot_training.backends.ec2_batching import active_coordinators as coordinators

    return coordinators()


def record_detection(seen: dict[str, float], tick_of: dict[str, float]) -> asyncio.Event:
    """Note when the shared DescribeInstances first returned each instance as ended (the backend saw it),
    and when that tick's calls started (``tick_of``); the event returned is set whenever a tick ends."""
    from airflow_spot_training.backends import ec2_batching

    describe_all = ec2_batching.DescribeCoordinator._describe_all
    describe_chunk = ec2_batching.DescribeCoordinator._describe_chunk
    tick_started = [0.0]
    tick_ended = asyncio.Event()

    async def tick(self: Any, ids: list[str]) -> None:
        tick_started[0] = time.monotonic()
        await describe_all(self, ids)
        tick_ended.set()

    async def timed(self: Any, chunk: list[str], *args: Any) -> dict[str, dict[str, Any]]:
        found = await describe_chunk(self, chunk, *args)
        now = time.monotonic()
        for instance_id, instance in found.items():
            if (instance.get("State") or {}).get("Name") == "terminated" and instance_id not in seen:
                seen[instance_id], tick_of[instance_id] = now, tick_started[0]
        return found

    ec2_batching.DescribeCoordinator._describe_all = tick  # type: ignore[method-assign]
    ec2_batching.DescribeCoordinator._describe_chunk = timed  # type: ignore[method-assign]
    return tick_ended


async def after_next_tick(tick_ended: asyncio.Event | None) -> None:
    """Return just after the next tick's calls are back (at once for the peer, which has no ticks)."""
    if tick_ended is not None:
        tick_ended.clear()
        await tick_ended.wait()


def instance_id_of(trigger: Any) -> str:
    return trigger.attempt_handle.instance_id if hasattr(trigger, "attempt_handle") else trigger.instance_id


def reclaim_times(count_file: Path) -> dict[str, float]:
    """Instance id -> the moment the counting server finished reclaiming it."""
    lines = Path(f"{count_file}.reclaims").read_text().split("\n")
    return {instance_id: float(at) for instance_id, at in (line.split() for line in lines if line)}


def worst_phase_detections(count_file: Path, reclaimed: dict[str, float], detected: dict[str, float]) -> list[float]:
    """Per reclaimed instance, the longest its reclaim could have waited to be detected: from the last call
    that read its state before the reclaim to the detection. A reclaim just after that read is seen by the
    next call only, which is the call that saw ours, so this is the worst phase, measured rather than
    assumed. A reclaim in progress holds the next call back (moto's reclaim is slow and holds a lock); at
    the worst phase it would be long over, so that wait is taken out."""
    reads: dict[str, list[tuple[float, float]]] = {instance_id: [] for instance_id in detected}
    for line in Path(f"{count_file}.reads").read_text().splitlines():
        read, waited, ids = line.split(" ", 2)
        for instance_id in set(ids.split(",")) & reads.keys():
            reads[instance_id].append((float(read), float(waited)))
    worst = []
    for instance_id, seen_at in detected.items():
        before = [read for read, _ in reads[instance_id] if read < reclaimed[instance_id]]
        seeing = min((read, waited) for read, waited in reads[instance_id] if read >= reclaimed[instance_id])
        worst.append(seen_at - max(before) - seeing[1])
    return worst


def cpu_seconds_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def instrument(triggers: list[Any], polls: list[int], seen: dict[str, float], tick_of: dict[str, float]
               ) -> asyncio.Event:
    """Instrument ours only: count status checks in ``polls``, note when the shared call first showed each
    end (:func:`record_detection`); return the event set whenever a tick ends."""
    def counted_poll(poll: Any) -> Any:
        async def wrapper(handle: Any) -> Any:
            status = await poll(handle)
            polls[0] += 1
            return status
        return wrapper

    for trigger in triggers:
        object.__setattr__(trigger.backend, "poll", counted_poll(trigger.backend.poll))
    return record_detection(seen, tick_of)


async def run_side(side: str, triggers: list[Any], chosen: list[int], interval: float, window: int,
                   count_file: Path, reclaim: Any, server_pid: int, event_timeout: float) -> dict[str, Any]:
    """Watch every trigger, measure a window of steady intervals, reclaim the ``chosen`` ones' instances
    and time their events (the others keep polling meanwhile, as in a triggerer)."""
    events: dict[int, float] = {}
    payloads: dict[int, dict[str, Any]] = {}
    seen: dict[str, float] = {}
    tick_of: dict[str, float] = {}
    polls = [0]
    tick_ended = instrument(triggers, polls, seen, tick_of) if side == "ours" else None

    async def watch(k: int, trigger: Any) -> None:
        async for event in trigger.run():
            events[k] = time.monotonic()
            payloads[k] = event.payload
            return

    rss_before = peak_rss_mb()
    started = time.monotonic()
    tasks = [asyncio.ensure_future(watch(k, t)) for k, t in enumerate(triggers)]
    await asyncio.sleep(3 * interval)  # warm-up: clients created, pollers in step
    if side == "ours":
        for _ in range(40):
            before = polls[0]
            await asyncio.sleep(interval)
            if polls[0] - before >= 0.9 * len(triggers):
                break
    warmup_s = time.monotonic() - started
    calls0, cpu0, t0, polls0 = count_file.stat().st_size, time.process_time(), time.monotonic(), polls[0]
    moto0, ticks = cpu_seconds_of(server_pid), []
    for _ in range(window):
        await asyncio.sleep(interval)
        ticks += [c.last_tick_seconds for c in active_coordinators()]
    calls1, cpu1, t1, polls1 = count_file.stat().st_size, time.process_time(), time.monotonic(), polls[0]
    moto1 = cpu_seconds_of(server_pid)
    # a status check is one trigger learning its instance's state: one DescribeInstances for the peer
    checks = (polls1 - polls0) if side == "ours" else (calls1 - calls0)
    rss_running = peak_rss_mb()
    early = len(events)
    # the worst phase: the wave comes just after a tick's calls read every instance, so the next tick sees it
    await after_next_tick(tick_ended)
    reclaim_started = time.monotonic()
    await asyncio.to_thread(reclaim)
    reclaim_call_s = time.monotonic() - reclaim_started
    # a CPU-starved side may not hear of every reclaim: its missing events count as the time waited
    await asyncio.wait([tasks[k] for k in chosen], timeout=event_timeout)
    waited = time.monotonic()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    intervals = (t1 - t0) / interval
    n = len(triggers)
    reclaimed = reclaim_times(count_file)  # when the server had reclaimed each instance
    ids = [instance_id_of(t) for t in triggers]
    detected = {ids[k]: seen[ids[k]] for k in chosen} if side == "ours" else {}
    latency = {k: events.get(k, waited) - reclaimed[ids[k]] for k in chosen}
    return {
        "side": side,
        "n": n,
        "reclaimed": len(chosen),
        "interval_s": interval,
        "describe_calls_per_interval": round((calls1 - calls0) / intervals, 2),
        "describe_calls_target": math.ceil(n / 1000),
        "cpu_s_per_trigger_per_interval": (cpu1 - cpu0) / intervals / n,
        "cpu_s_window": round(cpu1 - cpu0, 3),
        "moto_cpu_s_per_interval": round((moto1 - moto0) / intervals, 3),
        "moto_cpu_s_per_describe_call": round((moto1 - moto0) / max(calls1 - calls0, 1), 3),
        "shared_call_s": _spread(ticks) if ticks else None,
        "status_checks_per_trigger_per_interval": round(checks / intervals / n, 3),
        "cpu_ms_per_status_check": round((cpu1 - cpu0) / max(checks, 1) * 1000, 3),
        "peak_rss_mb_per_trigger": round(max(0.0, rss_running - rss_before) / n, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "events_before_reclaim": early,
        "events_missing": sum(1 for k in chosen if k not in events),
        "event_timeout_s": event_timeout,
        "warmup_s": round(warmup_s, 1),
        "reclaim_call_s": round(reclaim_call_s, 3),
        "reclaim_to_event_s": _spread(list(latency.values())),
        **detection_figures(count_file, reclaimed, detected, tick_of, {ids[k]: at for k, at in events.items()}),
        "event_latency_by_trigger": latency,
        "payloads": payloads,
    }


def detection_figures(count_file: Path, reclaimed: dict[str, float], detected: dict[str, float],
                      tick_of: dict[str, float], events: dict[str, float]) -> dict[str, Any]:
    """Ours only (the peer has no shared call): per reclaimed instance id, reclaim -> detection, the share
    of the call that saw it, detection -> event and the worst phase."""
    if not detected:
        return dict.fromkeys(["reclaim_to_detection_s", "tick_start_to_detection_s", "detection_to_event_s",
                              "worst_phase_detection_s"])
    return {
        "reclaim_to_detection_s": _spread([at - reclaimed[i] for i, at in detected.items()]),
        # from the start of the tick that saw it, or from the reclaim if that tick started before the
        # reclaim was done (its call then waited for moto's reclaim to finish): the call's own share
        "tick_start_to_detection_s": _spread([at - max(tick_of[i], reclaimed[i]) for i, at in detected.items()]),
        "detection_to_event_s": _spread([events[i] - at for i, at in detected.items()]),
        "worst_phase_detection_s": _spread(worst_phase_detections(count_file, reclaimed, detected)),
    }


def _spread(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": round(statistics.median(values), 3), "p95": round(values[math.ceil(0.95 * len(values)) - 1], 3),
            "max": round(values[-1], 3)}


def relaunch_latencies(side: str, result: dict[str, Any], trainings: list[Training], image_id: str,
                       sample: int) -> None:
    """Reclaim -> next launch request, for the sampled trainings: each one's event latency (measured in the
    triggerer, all N together) plus its worker's path from the event to the launch request (run one at a
    time, as each task's own worker would run it)."""
    latency = result.pop("event_latency_by_trigger")
    payloads = result.pop("payloads")
    paths: list[float] = []
    if side == "ours":  # the sampled trainings are the first triggers, all of them reclaimed
        for k, training in enumerate(trainings):
            paths.append(training.resume(payloads[k]))
        sampled = [latency[k] + paths[k] for k in range(len(trainings))]
    else:
        reclaimed = sorted(latency)
        picked = reclaimed[::max(1, len(reclaimed) // sample)][:sample]  # spread over the reclaimed triggers
        paths = [peer_relaunch_seconds(image_id) for _ in picked]
        sampled = [latency[k] + path for k, path in zip(picked, paths)]
    result["event_to_launch_request_s"] = _spread(paths)
    result["reclaim_to_launch_request_s"] = _spread(sampled)
    result["relaunch_sample"] = len(sampled)


def chosen_for_reclaim(n: int, sample: int, reclaim: int) -> list[int]:
    """Which trainings are reclaimed: the ``sample`` first (driven through the operator), then others
    spread evenly over the N (so over every shared call); ``reclaim`` 0 (or >= N) means all."""
    if reclaim <= 0 or reclaim >= n:
        return list(range(n))
    first = list(range(min(sample, n, reclaim)))
    rest = range(len(first), n)
    step = max(1, len(rest) // max(1, reclaim - len(first)))
    return first + list(rest[::step])[:reclaim - len(first)]


def worker(side: str, n: int, interval: float, window: int, sample: int, reclaim_count: int,
           event_timeout: float) -> dict[str, Any]:
    port = free_port()
    count_file = Path(tempfile.mkdtemp()) / "describe-calls"
    count_file.touch()
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.moto_counting_server", str(port), str(count_file)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update({
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "extra": {"endpoint_url": endpoint,
                                                                                  "region_name": REGION}}),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        import logging

        import boto3

        logging.disable(logging.WARNING)
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
        boto3.client("s3", region_name=REGION, endpoint_url=endpoint).create_bucket(Bucket="bench")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        # the sampled trainings launch through the operator first (its token lookup is cheap while the
        # account is small); the rest are launched in bulk and watched by the same triggers
        trainings = [Training(k, image, interval) for k in range(min(sample, n))] if side == "ours" else []
        sampled_triggers = [training.start() for training in trainings]
        ids: list[str] = [trigger.attempt_handle.instance_id for trigger in sampled_triggers]
        while len(ids) < n:
            batch = min(250, n - len(ids))
            launched = ec2.run_instances(ImageId=image, MinCount=batch, MaxCount=batch, InstanceType="c5.large")
            ids += [i["InstanceId"] for i in launched["Instances"]]

        chosen = chosen_for_reclaim(n, min(sample, n), reclaim_count)  # the same trainings on both sides

        def reclaim() -> None:
            doomed = [ids[k] for k in chosen]
            for start in range(0, len(doomed), 1000):
                ec2.terminate_instances(InstanceIds=doomed[start:start + 1000])

        if side == "ours":
            triggers = sampled_triggers + our_triggers(ids[len(sampled_triggers):], interval)
        else:
            triggers = peer_triggers(ids, interval)
        result = asyncio.run(run_side(side, triggers, chosen, interval, window, count_file, reclaim, server.pid,
                                      event_timeout))
        relaunch_latencies(side, result, trainings, image, sample)
        return result
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)


# =========================================================================================
# the command
# =========================================================================================
def _events_cell(result: dict[str, Any]) -> str:
    """Reclaim -> event, with the events still missing at the timeout (their latency is a lower bound)."""
    missing = result.get("events_missing", 0)
    cell = _cell(result["reclaim_to_event_s"])
    return f"{cell} ({missing} missing at >= {result['event_timeout_s']:.0f})" if missing else cell


NAMES = {"ours": "SpotTrainingTrigger (ec2)", "peer": "EC2StateSensorTrigger"}
COLUMNS = [
    ("N", lambda r: str(r["n"])),
    ("reclaimed", lambda r: str(r.get("reclaimed", r["n"]))),
    ("trigger", lambda r: NAMES[r["side"]]),
    ("reclaim -> detection (s)", lambda r: _cell(r.get("reclaim_to_detection_s")) if r["side"] == "ours" else "= event"),
    ("tick start (or reclaim) -> detection (s)", lambda r: _cell(r.get("tick_start_to_detection_s"))),
    ("detection -> event (s)", lambda r: _cell(r.get("detection_to_event_s")) if r["side"] == "ours" else "-"),
    ("reclaim -> event (s)", _events_cell),
    ("event -> launch request (s)", lambda r: _cell(r["event_to_launch_request_s"])),
    ("reclaim -> launch request (s)", lambda r: _cell(r["reclaim_to_launch_request_s"])),
    ("worst phase: read before the reclaim -> detection (s)", lambda r: _cell(r.get("worst_phase_detection_s"))),
    ("worst phase -> launch request (s)", lambda r: _worst_phase(r)),
    ("DescribeInstances / interval (target)", lambda r: f"{r['describe_calls_per_interval']} "
                                                        f"({r['describe_calls_target']})"),
    ("CPU ms / trigger / interval", lambda r: f"{r['cpu_s_per_trigger_per_interval'] * 1000:.3f}"),
    ("checks / trigger / interval", lambda r: str(r["status_checks_per_trigger_per_interval"])),
    ("moto CPU s / interval", lambda r: str(r["moto_cpu_s_per_interval"])),
    ("moto CPU s / DescribeInstances", lambda r: str(r["moto_cpu_s_per_describe_call"])),
    ("shared call s (ours)", lambda r: _cell(r.get("shared_call_s"))),
]


def worst_phase_seconds(result: dict[str, Any]) -> float | None:
    """Reclaim -> launch request had the reclaim come just after the last call that read its instance: the
    slowest such detection (a whole interval, the next call's wait and answer, our parse), then our slowest
    path after it (detection -> event, event -> launch request). Results saved before that detection was
    measured count the interval and the slowest time from a tick's start to a detection instead."""
    ours = result.get("detection_to_event_s")
    if ours is None:
        return None
    phase = result.get("worst_phase_detection_s")
    if phase is not None:
        detection = phase["max"]
    else:
        call, into_tick = result.get("shared_call_s"), result.get("tick_start_to_detection_s")
        if call is None or into_tick is None:
            return None
        detection = max(result["interval_s"], call["max"], into_tick["max"]) + into_tick["max"]
    return detection + ours["max"] + result["event_to_launch_request_s"]["max"]


def _worst_phase(result: dict[str, Any]) -> str:
    worst = worst_phase_seconds(result)
    return "-" if worst is None else f"{worst:.2f}"


def _cell(spread: dict[str, float] | None) -> str:
    return f"{spread['median']:.2f} / {spread['p95']:.2f} / {spread['max']:.2f}" if spread else "-"


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table: latencies are median / p95 / max."""
    rows = [[title for title, _ in COLUMNS]] + [[cell(r) for _, cell in COLUMNS] for r in results]
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def cpu_ratio(results: list[dict[str, Any]]) -> list[str]:
    """Per N: our relaunch beyond the interval (measured, and at the worst phase), and our CPU per trigger
    as a share of the peer's."""
    lines = []
    for n, reclaimed in sorted({(r["n"], r.get("reclaimed", r["n"])) for r in results}):
        by_side = {r["side"]: r for r in results if r["n"] == n and r.get("reclaimed", r["n"]) == reclaimed}
        ours, peer = by_side.get("ours"), by_side.get("peer")
        if ours is None:
            continue
        beyond = ours["reclaim_to_launch_request_s"]["max"] - ours["interval_s"]
        worst = worst_phase_seconds(ours)
        own = ours["detection_to_event_s"]["max"] + ours["event_to_launch_request_s"]["max"]
        line = (f"N={n}, {reclaimed} reclaimed: relaunch request at most {beyond:+.2f} s beyond the poll interval "
                f"here, {(worst or 0) - ours['interval_s']:+.2f} s at the worst phase (target <= +1 s); "
                f"our own part (detection -> event -> launch request) at most {own:.2f} s")
        if peer is not None:
            share = ours["cpu_s_per_trigger_per_interval"] / peer["cpu_s_per_trigger_per_interval"]
            line += f"; CPU per trigger {share:.3f} of the peer's (target <= 0.2)"
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=3, help="poll intervals measured")
    parser.add_argument("--sample", type=int, default=100,
                        help="trainings per side driven through the operator to their next launch request")
    parser.add_argument("--reclaim", type=int, default=100,
                        help="instances reclaimed at once after the measured window (0: all N)")
    parser.add_argument("--event-timeout", type=float, default=300.0,
                        help="seconds to wait for the reclaimed trainings' events; one still missing then counts "
                             "as that long (the table marks it with >=)")
    parser.add_argument("--sides", nargs="+", default=["ours", "peer"], choices=["ours", "peer"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--table-from", type=Path, help="print the table of results saved with --json, and exit")
    args = parser.parse_args()
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print(table(saved))
        print("\n".join(cpu_ratio(saved)))
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.n[0], args.interval, args.window, args.sample, args.reclaim,
                                args.event_timeout)))
        return 0
    results = []
    for n in args.n:
        for side in args.sides:
            print(f"==> N={n} {side} ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.ec2_triggers", "--worker", side, "--n", str(n),
                 "--interval", str(args.interval), "--window", str(args.window), "--sample", str(args.sample),
                 "--reclaim", str(args.reclaim), "--event-timeout", str(args.event_timeout)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(table(results))
    print("\n".join(cpu_ratio(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
