"""docs/deployment.md: the IAM policy is valid JSON and grants what the AWS backends call."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[3] / "docs" / "deployment.md"


def _policy() -> dict:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    return json.loads(blocks[0])


def _actions(policy: dict) -> set[str]:
    out: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        out.update([actions] if isinstance(actions, str) else actions)
    return out


def test_iam_policy_covers_the_backends_calls():
    actions = _actions(_policy())
    assert {"ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:TerminateInstances",
            "ec2:DescribeSpotInstanceRequests", "ec2:DescribeSpotPriceHistory", "iam:PassRole",
            "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
            "sagemaker:AddTags", "s3:GetObject", "s3:PutObject", "s3:ListBucket",
            "ec2:GetConsoleOutput", "logs:GetLogEvents", "logs:DescribeLogStreams"} <= actions
    assert not any(a.endswith(":*") or a == "*" for a in actions)  # no wildcard actions


def test_iam_policy_limits_what_can_be_limited():
    by_sid = {s["Sid"]: s for s in _policy()["Statement"]}
    own = {"aws:ResourceTag/spot-training:deployment": "DEPLOYMENT_ID"}
    assert by_sid["TerminateOnlyOwnInstances"]["Condition"] == {"StringEquals": own}
    assert by_sid["ReadFailedEC2AttemptsConsole"]["Condition"] == {"StringEquals": own}
    for sid in ("LaunchOnlyTaggedForThisDeployment", "TagOnlyAtLaunch"):
        condition = by_sid[sid]["Condition"]
        assert condition["StringEquals"]["aws:RequestTag/spot-training:deployment"] == "DEPLOYMENT_ID"
        assert condition["ForAllValues:StringLike"]["aws:TagKeys"] == ["spot-training:*", "Name"]
    assert by_sid["TagOnlyAtLaunch"]["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances"
    tagged = set(by_sid["LaunchOnlyTaggedForThisDeployment"]["Resource"])
    assert {r.rsplit(":", 1)[-1].split("/")[0] for r in tagged} == {"instance", "volume", "spot-instances-request"}
    for sid in ("PassTheInstanceRole", "PassTheSageMakerExecutionRole"):
        assert "iam:PassedToService" in json.dumps(by_sid[sid]["Condition"])
    unscoped = {sid for sid, s in by_sid.items() if s["Resource"] == "*"}
    assert unscoped == {"WatchInstancesAndPrices", "OnDemandPricesOptional"}  # Describe*/pricing: no resources
