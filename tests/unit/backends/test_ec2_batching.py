"""The shared DescribeInstances coordinator: one call per interval for many pollers.

Most tests give the coordinator a stand-in for the aiobotocore EC2 client (the
cloud's API boundary) that records each call; one test runs real pollers against
moto through EC2SpotBackend.poll.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from airflow_spot_training.backends.ec2_batching import MAX_IDS_PER_CALL, DescribeCoordinator, coordinator_for


class RecordingEC2Client:
    """Answers DescribeInstances like EC2 (NotFound for unknown ids, the ``instance-state-name``
    filter applied to the rest) and records every call's ids and filter."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.states = {i: "running" for i in known}
        self.calls: list[list[str]] = []
        self.filters: list[list[str] | None] = []
        self.closed = False

    async def describe_instances(self, InstanceIds: list[str], Filters: list[Any] | None = None) -> dict[str, Any]:  # noqa: N803
        self.calls.append(list(InstanceIds))
        assert len(InstanceIds) <= MAX_IDS_PER_CALL
        missing = [i for i in InstanceIds if i not in self.known]
        if missing:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "InvalidInstanceID.NotFound",
                                         "Message": f"The instance IDs '{', '.join(missing)}' do not exist"}},
                              "DescribeInstances")
        wanted_states = next((f["Values"] for f in Filters or [] if f["Name"] == "instance-state-name"), None)
        self.filters.append(wanted_states)
        return {"Reservations": [{"Instances": [
            {"InstanceId": i, "State": {"Name": self.states[i]}, "LaunchTime": "launched",
             "StateReason": {"Code": "Server.SpotInstanceTermination"} if self.states[i] == "terminated" else {}}
            for i in InstanceIds if wanted_states is None or self.states[i] in wanted_states]}]}


class ClientContext:
    def __init__(self, client: RecordingEC2Client) -> None:
        self.client = client
        self.opened = 0

    async def __aenter__(self) -> RecordingEC2Client:
        self.opened += 1
        return self.client

    async def __aexit__(self, *exc: Any) -> None:
        self.client.closed = True


def factory(context: ClientContext):
    async def make() -> ClientContext:
        return context
    return make


def ids(n: int) -> list[str]:
    return [f"i-{k:017x}" for k in range(n)]


class TestDescribeCoordinator:
    @pytest.mark.parametrize("n", [1, 100, 2500])
    def test_one_call_per_thousand_ids_per_tick(self, n):
        client = RecordingEC2Client(set(ids(n)))
        context = ClientContext(client)

        async def main() -> list[dict[str, Any] | None]:
            # an interval long enough that every poller registers before the first tick,
            # however loaded the machine (2,500 coroutines can take longer than 50 ms to start)
            coordinator = DescribeCoordinator(("k",), factory(context), interval=1.0)
            return await asyncio.gather(*(coordinator.describe(i, caller=i) for i in ids(n)))

        results = asyncio.run(main())
        assert all(r is not None and r["State"]["Name"] == "running" for r in results)
        assert len(client.calls) == math.ceil(n / MAX_IDS_PER_CALL)
        assert context.opened == 1 and client.closed

    def test_pollers_on_their_own_schedules_share_each_tick(self):
        n, rounds = 50, 5
        client = RecordingEC2Client(set(ids(n)))

        async def poller(coordinator: DescribeCoordinator, instance_id: str, offset: float) -> None:
            await asyncio.sleep(offset)
            for _ in range(rounds):
                await coordinator.describe(instance_id, caller=instance_id)
                await asyncio.sleep(0.1)  # the trigger's own poll interval

        async def main() -> None:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=0.1)
            await asyncio.gather(*(poller(coordinator, i, k * 0.002) for k, i in enumerate(ids(n))))

        asyncio.run(main())
        # 250 status checks; calls follow the coordinator's ticks, not the pollers
        assert len(client.calls) <= n * rounds // 10
        assert max(len(call) for call in client.calls) == n

    def test_a_call_slower_than_the_interval_keeps_every_poller_in_the_next_call(self):
        class Slow(RecordingEC2Client):
            async def describe_instances(self, InstanceIds, Filters=None):  # noqa: N803
                await asyncio.sleep(0.2)  # four intervals: thousands of instances, a loaded machine
                return await super().describe_instances(InstanceIds, Filters)

        client = Slow(set(ids(20)))

        async def poller(coordinator: DescribeCoordinator, instance_id: str, offset: float) -> None:
            await asyncio.sleep(offset)
            for _ in range(4):
                await coordinator.describe(instance_id, caller=instance_id)
                await asyncio.sleep(0.05)

        async def main() -> None:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=0.05)
            await asyncio.gather(*(poller(coordinator, i, 0.01 * k) for k, i in enumerate(ids(20))))

        asyncio.run(main())
        # after the first call, every call covers every poller: none was dropped for being slow to return
        assert [len(call) for call in client.calls[1:4]] == [20, 20, 20]

    def test_unknown_ids_are_none_and_do_not_fail_the_others(self):
        client = RecordingEC2Client({"i-00000000000000001"})

        async def main() -> list[Any]:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=0.05)
            return await asyncio.gather(coordinator.describe("i-00000000000000001"),
                                        coordinator.describe("i-0000000000000dead"))

        found, missing = asyncio.run(main())
        assert found["InstanceId"] == "i-00000000000000001" and missing is None

    def test_a_cancelled_poller_leaves_the_others_served(self):
        client = RecordingEC2Client(set(ids(3)))

        async def main() -> list[Any]:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=0.05)
            doomed = asyncio.ensure_future(coordinator.describe(ids(3)[0]))
            others = [asyncio.ensure_future(coordinator.describe(i)) for i in ids(3)[1:]]
            await asyncio.sleep(0)
            doomed.cancel()
            results = await asyncio.gather(*others)
            assert doomed.cancelled()
            return results

        assert [r["InstanceId"] for r in asyncio.run(main())] == ids(3)[1:]

    def test_errors_reach_the_pollers_and_the_next_tick_recovers(self):
        class Flaky(RecordingEC2Client):
            async def describe_instances(self, InstanceIds, Filters=None):  # noqa: N803
                if not self.calls:
                    self.calls.append(InstanceIds)
                    raise RuntimeError("connection reset")
                return await super().describe_instances(InstanceIds, Filters)

        client = Flaky(set(ids(1)))

        async def main() -> Any:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=0.05)
            with pytest.raises(RuntimeError, match="connection reset"):
                await coordinator.describe(ids(1)[0])
            return await coordinator.describe(ids(1)[0])

        assert asyncio.run(main())["InstanceId"] == ids(1)[0]

    def test_known_instances_are_asked_for_only_if_not_running_and_a_change_is_seen(self):
        """After one full description per instance, ticks filter out running instances: the answer
        lists only what changed, the others are served as running with their launch time."""
        client = RecordingEC2Client(set(ids(3)))

        async def main() -> list[list[Any]]:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=0.01)
            seen = [await asyncio.gather(*(coordinator.describe(i, caller=i) for i in ids(3))) for _ in range(2)]
            client.states[ids(3)[1]] = "terminated"  # reclaimed between two ticks
            for _ in range(100):  # the next ticks (one served before the change may come first)
                seen.append(await asyncio.gather(*(coordinator.describe(i, caller=i) for i in ids(3))))
                if seen[-1][1]["State"]["Name"] == "terminated":
                    break
            return seen

        seen = asyncio.run(main())
        assert client.filters[0] is None and all(f is not None and "running" not in f for f in client.filters[1:])
        assert [r["State"]["Name"] for r in seen[-1]] == ["running", "terminated", "running"]
        assert all(r["State"]["Name"] == "running" for tick in seen[:-1] for r in tick)
        assert all(r["LaunchTime"] == "launched" for tick in seen for r in tick)
        assert seen[-1][1]["StateReason"] == {"Code": "Server.SpotInstanceTermination"}

    def test_new_ids_fill_the_unfiltered_calls_and_the_count_stays_one_per_thousand(self):
        old, new = ids(1500), [f"i-{k:017x}" for k in range(10**6, 10**6 + 700)]
        client = RecordingEC2Client(set(old) | set(new))

        async def main() -> None:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=1.0)
            await asyncio.gather(*(coordinator.describe(i, caller=i) for i in old))
            before = len(client.calls)
            await asyncio.gather(*(coordinator.describe(i, caller=i) for i in old + new))
            calls = list(zip(client.calls[before:], client.filters[before:]))
            assert len(calls) == math.ceil(2200 / MAX_IDS_PER_CALL)
            unfiltered = [set(call) for call, states in calls if states is None]
            assert set(new) <= set().union(*unfiltered)  # every new id is described in full
            assert sum(len(call) for call, states in calls if states is not None) >= 1000

        asyncio.run(main())

    def test_a_changed_instance_is_served_before_the_unchanged_ones_of_a_faster_call(self):
        """The unchanged instances' pollers wait for the whole tick; a change reaches its poller when its
        call returns, even if another call of the tick came back first with nothing changed."""
        class SecondCallSlow(RecordingEC2Client):
            async def describe_instances(self, InstanceIds, Filters=None):  # noqa: N803
                if Filters and InstanceIds[0] == ids(1500)[1000]:
                    await asyncio.sleep(0.2)
                return await super().describe_instances(InstanceIds, Filters)

        every = ids(1500)  # the callers: each poller is served a tick once, by identity
        client = SecondCallSlow(set(every))
        unchanged, changed = every[0], every[1200]
        served: list[str] = []

        async def main() -> None:
            coordinator = DescribeCoordinator(("k",), factory(ClientContext(client)), interval=0.5)
            await asyncio.gather(*(coordinator.describe(i, caller=i) for i in every))  # described in full
            client.states[changed] = "terminated"

            async def poll(instance_id: str) -> None:
                await coordinator.describe(instance_id, caller=instance_id)
                served.append(instance_id)

            await asyncio.gather(*(poll(i) for i in every))

        asyncio.run(main())
        assert served.index(changed) < served.index(unchanged)
        assert served[0] == changed

    def test_each_event_loop_gets_its_own_coordinator(self):
        def in_a_new_loop() -> tuple[DescribeCoordinator, Any]:
            context = ClientContext(RecordingEC2Client(set(ids(1))))

            async def main() -> tuple[DescribeCoordinator, Any]:
                coordinator = coordinator_for(("k",), factory(context), 0.05)
                assert coordinator_for(("k",), factory(context), 0.05) is coordinator
                return coordinator, await coordinator.describe(ids(1)[0])

            return asyncio.run(main())

        first, found1 = in_a_new_loop()
        second, found2 = in_a_new_loop()
        assert first is not second and found1 == found2


def test_pollers_against_moto_share_one_describe_call_per_interval(aws, monkeypatch):
    """30 triggers' worth of EC2SpotBackend.poll in one loop: one DescribeInstances per tick."""
    import boto3

    from airflow_spot_training.backends.ec2 import EC2Handle, EC2SpotBackend
    from tests import aws_cloud

    network = aws_cloud.make_network()
    ec2 = boto3.client("ec2", region_name=aws_cloud.REGION)
    launched = ec2.run_instances(ImageId=network["image_id"], MinCount=30, MaxCount=30, InstanceType="c5.large")
    handles = [EC2Handle(backend="ec2", token=f"t-a{n}", attempt=n, capacity="spot", instance_id=i["InstanceId"],
                         launched_at=0.0) for n, i in enumerate(launched["Instances"], start=1)]
    backend = EC2SpotBackend("x", image_id=network["image_id"], instance_types=["c5.large"], describe_interval=0.2)
    plan = aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan())

    async def main() -> list[Any]:
        statuses: list[Any] = []
        for _ in range(3):
            statuses = await asyncio.gather(*(backend.poll(h) for h in handles))
        return statuses

    statuses = asyncio.run(main())
    assert [s.state for s in statuses] == ["running"] * 30
    assert plan.calls["DescribeInstances(InstanceIds)"] == 3


def test_a_call_over_many_reservations_follows_next_token(aws, monkeypatch):
    """Instances launched one by one are one reservation each; moto pages a DescribeInstances answer at
    100 reservations even for listed ids. Every one of 120 is described, and a reclaim among the last
    ones is seen on the filtered ticks too."""
    import boto3

    from airflow_spot_training.backends.ec2 import EC2Handle, EC2SpotBackend
    from tests import aws_cloud

    network = aws_cloud.make_network()
    ec2 = boto3.client("ec2", region_name=aws_cloud.REGION)
    instance_ids = [ec2.run_instances(ImageId=network["image_id"], MinCount=1, MaxCount=1,
                                      InstanceType="c5.large")["Instances"][0]["InstanceId"] for _ in range(120)]
    handles = [EC2Handle(backend="ec2", token=f"t-a{n}", attempt=n, capacity="spot", instance_id=instance_id,
                         launched_at=0.0) for n, instance_id in enumerate(instance_ids, start=1)]
    backend = EC2SpotBackend("x", image_id=network["image_id"], instance_types=["c5.large"], describe_interval=0.2)

    async def main() -> tuple[list[Any], list[Any]]:
        first = await asyncio.gather(*(backend.poll(h) for h in handles))
        await asyncio.to_thread(ec2.terminate_instances, InstanceIds=[instance_ids[-1]])
        later = first
        for _ in range(2):
            later = await asyncio.gather(*(backend.poll(h) for h in handles))
        return first, later

    first, later = asyncio.run(main())
    assert [s.state for s in first] == ["running"] * 120
    assert [s.state for s in later[:-1]] == ["running"] * 119
    assert later[-1].state != "running"
