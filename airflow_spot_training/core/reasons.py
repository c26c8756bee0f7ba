"""Low-cardinality names for why a training changed capacity.

Escalation reasons in the ledger are sentences for people ("3 preemption(s) reached the
threshold max_preemptions=3"). A metric tag or a chart legend needs a handful of fixed
values instead: :func:`escalation_kind` maps a reason to one of :data:`ESCALATION_KINDS`.
"""

from __future__ import annotations

#: every value :func:`escalation_kind` returns
ESCALATION_KINDS = ("preemptions", "deadline", "spot_wait", "back_to_spot", "policy")


def escalation_kind(reason: str | None, to: str | None = "on_demand") -> str:
    """The kind of an escalation, from its reason and the capacity it moved to.

    :param reason: the decision's reason, as the ledger recorded it.
    :param to: the capacity the training moved to (``"spot"`` means it moved back).
    """
    text = (reason or "").lower()
    if to == "spot":
        return "back_to_spot"
    if "max_spot_wait" in text or "waited" in text:
        return "spot_wait"
    if "max_preemptions" in text or ("preemption" in text and "threshold" in text):
        return "preemptions"
    if "deadline" in text or "slack" in text or "time left" in text:
        return "deadline"
    return "policy"
