"""One ``DescribeInstances`` call per region and poll interval, shared by every trigger.

Airflow runs many deferred tasks in one triggerer process, each polling its own
instance. Polling one instance per call costs N calls per interval for N tasks and
runs into EC2's request-rate limits (``RequestLimitExceeded``) long before the
triggerer runs out of CPU. Airflow 3.3's shared trigger streams exist only for
asset watchers, so this module batches inside the process instead:

* a :class:`DescribeCoordinator` per event loop and per (connection, region,
  interval) is created lazily, the first time a trigger polls;
* every ``interval`` seconds it describes all instance ids polled recently, at most
  :data:`MAX_IDS_PER_CALL` per call and :data:`MAX_CONCURRENT_CALLS` calls at once,
  through one aiobotocore client (``AwsBaseHook.get_async_conn()``); each call's
  changed instances are served as it returns, the unchanged ones when the tick is over;
* :meth:`DescribeCoordinator.describe` returns the newest result the caller has
  not seen yet, or waits for the next tick, so each trigger sees every tick once;
* an instance is described in full once; after that its calls carry the filter
  ``instance-state-name`` = every state but ``running`` (:data:`CHANGED_STATES`). EC2
  still answers ``InvalidInstanceID.NotFound`` for an id it does not know, so an id it
  knows and leaves out of the answer is running, and its last full description (state
  set to running) is served. A steady tick's answer is then as long as the number of
  instances that are not running, not N: at 1,000 ids a full answer is about 3 MB of
  XML and a second of botocore parsing, and most of it said "still running".

Safe when the event loop changes (coordinators are kept per loop) and when a
trigger is cancelled (its waiter is dropped; the shared tick carries on for the
others). When no trigger has polled for a few intervals the coordinator closes
its client and goes away.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

#: DescribeInstances accepts at most 1000 instance ids per call
MAX_IDS_PER_CALL = 1000
#: calls of one tick in flight at once (a tick makes ceil(N / 1000) calls)
MAX_CONCURRENT_CALLS = 4
#: an id not polled for this many intervals is dropped from the tick
EXPIRE_INTERVALS = 3
_INSTANCE_ID = re.compile(r"i-[0-9a-f]+")
#: every instance state but running: what a known instance's calls ask for
CHANGED_STATES = ("pending", "shutting-down", "terminated", "stopping", "stopped")
_RUNNING = {"Code": 16, "Name": "running"}

ClientFactory = Callable[[], Awaitable[Any]]  # returns an aiobotocore client context manager


class DescribeCoordinator:
    """Batches DescribeInstances for every poller of one event loop, region and interval.

    :param key: what the coordinator is shared by (connection id, region, interval).
    :param client_factory: coroutine returning an aiobotocore EC2 client context manager.
    :param interval: seconds between two ticks.
    """

    def __init__(self, key: tuple[Any, ...], client_factory: ClientFactory, interval: float) -> None:
        self.key = key
        self.interval = interval
        self._client_factory = client_factory
        self._client_cm: Any = None
        self._client: Any = None
        self._results: dict[str, dict[str, Any] | None] = {}
        self._result_tick: dict[str, int] = {}
        #: instance id -> caller -> the newest tick that caller was served
        self._served_tick: dict[str, dict[int, int]] = {}
        self._last_polled: dict[str, float] = {}
        self._waiters: dict[str, list[asyncio.Future[tuple[int, dict[str, Any] | None]]]] = {}
        self._tick = 0
        self._last_call_seconds = 0.0
        self._task: asyncio.Task[None] | None = None
        #: DescribeInstances calls made so far (read by tests and the benchmark)
        self.calls = 0

    @property
    def last_tick_seconds(self) -> float:
        """Wall seconds the last tick's calls took (read by the benchmark)."""
        return self._last_call_seconds

    # -- the caller's side ---------------------------------------------------------------
    async def describe(self, instance_id: str, *, caller: object | None = None) -> dict[str, Any] | None:
        """The instance's newest description (``None`` if EC2 does not know the id).

        :param instance_id: the instance to describe.
        :param caller: who asks; each caller is served every tick at most once.
        """
        served = self._served_tick.setdefault(instance_id, {})
        token = id(caller)
        self._last_polled[instance_id] = time.monotonic()
        tick = self._result_tick.get(instance_id)
        if tick is not None and tick > served.get(token, 0):
            served[token] = tick
            return self._results.get(instance_id)
        future: asyncio.Future[tuple[int, dict[str, Any] | None]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(instance_id, []).append(future)
        self._ensure_running()
        try:
            tick, result = await future
        except asyncio.CancelledError:
            waiters = self._waiters.get(instance_id, [])
            if future in waiters:
                waiters.remove(future)
            raise
        self._served_tick.setdefault(instance_id, {})[token] = tick
        self._last_polled[instance_id] = time.monotonic()  # served: its trigger is alive, keep it in the tick
        return result

    def forget(self, instance_id: str) -> None:
        """Stop describing an instance (its trigger ended)."""
        self._last_polled.pop(instance_id, None)
        self._results.pop(instance_id, None)
        self._result_tick.pop(instance_id, None)
        self._served_tick.pop(instance_id, None)  # by id: an ending trigger costs O(1), not O(N)

    # -- the shared tick -----------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ec2-describe{self.key}")

    def _wanted_ids(self, now: float) -> list[str]:
        # a slow call (thousands of instances, a throttled API) stretches the cycle; do not expire
        # pollers that simply had no chance to come back yet
        horizon = now - EXPIRE_INTERVALS * max(self.interval, self._last_call_seconds)
        for instance_id in [i for i, t in self._last_polled.items() if t < horizon and not self._waiters.get(i)]:
            self.forget(instance_id)
        return sorted(set(self._last_polled) | {i for i, w in self._waiters.items() if w})

    async def _run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                ids = self._wanted_ids(started)
                if not ids:
                    break
                await self._describe_all(ids)
                elapsed = time.monotonic() - started
                self._last_call_seconds = elapsed
                await asyncio.sleep(max(0.0, self.interval - elapsed))
        finally:
            await self._close_client()
        if any(self._waiters.values()):  # a poller arrived while the client was closing
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ec2-describe{self.key}")
        else:
            _unregister(self)

    async def _describe_all(self, ids: list[str]) -> None:
        self._tick += 1
        tick = self._tick
        # the chunks' calls run together (at most MAX_CONCURRENT_CALLS at once): the last of
        # ceil(N / 1000) instances hears of its change one call after the tick, not N / 1000 calls
        limit = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        try:
            await self._get_client()  # one client for the calls below, not one each
        except Exception as e:  # hand the error to this tick's waiters; keep ticking
            log.warning("cannot create the EC2 client: %s", e)
            self._fail_waiters(ids, e)
            return
        # each call's changed instances are served as it returns; the unchanged ones (most of them,
        # and each a trigger to wake) once every call of the tick is back, so their wake-ups never
        # hold up the parse of another call's answer, nor the events of what it shows changed
        served = await asyncio.gather(*(self._describe_and_serve(chunk, filtered, tick, limit)
                                        for chunk, filtered in self._chunks(ids)))
        for unchanged, found in served:
            self._serve(unchanged, found, tick)

    def _chunks(self, ids: list[str]) -> list[tuple[list[str], bool]]:
        """The tick's calls: ``(ids, filtered)``, still ceil(N / 1000) of them. Ids never described
        in full come first, so they fill the unfiltered calls and the rest go filtered."""
        new = [i for i in ids if self._results.get(i) is None]
        ordered = new + [i for i in ids if self._results.get(i) is not None]
        return [(ordered[start:start + MAX_IDS_PER_CALL], start >= len(new))
                for start in range(0, len(ordered), MAX_IDS_PER_CALL)]

    async def _describe_and_serve(self, chunk: list[str], filtered: bool, tick: int,
                                  limit: asyncio.Semaphore) -> tuple[list[str], dict[str, Any]]:
        """Describe one chunk and serve the instances whose description changed; return the others."""
        try:
            async with limit:
                found = await self._describe_chunk(chunk, filtered)
        except Exception as e:  # hand the error to this tick's waiters; keep ticking
            log.warning("DescribeInstances for %s instance(s) failed: %s", len(chunk), e)
            self._fail_waiters(chunk, e)
            return [], {}
        unchanged = [i for i in chunk if found.get(i) is self._results.get(i)]
        if len(unchanged) < len(chunk):
            same = set(unchanged)
            self._serve([i for i in chunk if i not in same], found, tick)
        return unchanged, found

    def _serve(self, instance_ids: list[str], found: dict[str, Any], tick: int) -> None:
        for instance_id in instance_ids:
            self._results[instance_id] = found.get(instance_id)
            self._result_tick[instance_id] = tick
            for future in self._waiters.pop(instance_id, []):
                if not future.done():
                    future.set_result((tick, found.get(instance_id)))

    async def _describe_chunk(self, chunk: list[str], filtered: bool = False) -> dict[str, dict[str, Any]]:
        """Descriptions by id; ``filtered``: ask only for instances not running, and serve the
        others' last full description as running (every id of the chunk has one)."""
        client = await self._get_client()
        wanted = list(chunk)
        options = {"Filters": [{"Name": "instance-state-name", "Values": list(CHANGED_STATES)}]} if filtered else {}
        while wanted:
            try:
                found = await self._describe_pages(client, wanted, options)
            except Exception as e:
                missing = _missing_ids(e)
                if not missing:
                    raise
                # terminated long ago, or never existed: report those as unknown, describe the rest
                wanted = [i for i in wanted if i not in missing]
                continue
            return {**self._still_running(wanted, found), **found} if filtered else found
        return {}

    async def _describe_pages(self, client: Any, wanted: list[str], options: dict[str, Any]) -> dict[str, Any]:
        """Every instance of one DescribeInstances answer, following ``NextToken``: an answer can come in
        pages (moto pages at 100 reservations even for listed ids, and an instance launched alone is a
        reservation of its own); a page left unread would make its instances unknown, or, filtered, running."""
        found: dict[str, Any] = {}
        page: dict[str, str] = {}
        while True:
            self.calls += 1
            response = await client.describe_instances(InstanceIds=wanted, **options, **page)
            found.update((instance["InstanceId"], instance)
                         for reservation in response.get("Reservations", [])
                         for instance in reservation.get("Instances", []))
            if not response.get("NextToken"):
                return found
            page = {"NextToken": response["NextToken"]}

    def _still_running(self, wanted: list[str], found: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The ids a filtered call left out (EC2 knows them: it did not answer NotFound): running."""
        running = {}
        for instance_id in wanted:
            known = self._results.get(instance_id)
            if instance_id in found or known is None:
                continue
            if (known.get("State") or {}).get("Name") == "running":
                running[instance_id] = known  # the same object every tick: its trigger needs no new status
            else:
                running[instance_id] = {**_without(known, "StateReason", "StateTransitionReason"), "State": _RUNNING}
        return running

    def _fail_waiters(self, chunk: list[str], error: Exception) -> None:
        for instance_id in chunk:
            for future in self._waiters.pop(instance_id, []):
                if not future.done():
                    future.set_exception(error)

    async def _get_client(self) -> Any:
        if self._client is None:
            self._client_cm = await self._client_factory()
            self._client = await self._client_cm.__aenter__()
        return self._client

    async def _close_client(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            try:
                await cm.__aexit__(None, None, None)
            except Exception as e:  # closing must never hide the real outcome
                log.debug("closing the EC2 client failed: %s", e)


def _without(description: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in description.items() if key not in keys}


def _missing_ids(error: Exception) -> set[str]:
    response = getattr(error, "response", None) or {}
    err = response.get("Error", {})
    if err.get("Code") not in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
        return set()
    return set(_INSTANCE_ID.findall(str(err.get("Message", ""))))


# -- the per-loop registry -------------------------------------------------------------------
_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], DescribeCoordinator]] = (
    weakref.WeakKeyDictionary()
)


def coordinator_for(key: tuple[Any, ...], client_factory: ClientFactory, interval: float) -> DescribeCoordinator:
    """The coordinator of the running event loop for ``key``, created on first use."""
    loop = asyncio.get_running_loop()
    per_loop = _REGISTRY.setdefault(loop, {})
    coordinator = per_loop.get(key)
    if coordinator is None:
        coordinator = per_loop[key] = DescribeCoordinator(key, client_factory, interval)
    return coordinator


def _unregister(coordinator: DescribeCoordinator) -> None:
    for per_loop in list(_REGISTRY.values()):
        if per_loop.get(coordinator.key) is coordinator:
            del per_loop[coordinator.key]


def active_coordinators() -> list[DescribeCoordinator]:
    """Coordinators of the running event loop (for tests and the benchmark)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return []
    return list(_REGISTRY.get(loop, {}).values())
