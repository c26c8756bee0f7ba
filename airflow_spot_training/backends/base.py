"""The backend interface: what launches an attempt, watches it, and stops it.

One module per backend (``local``, ``ec2``, ``sagemaker``, ``compute_engine``,
``vertex_ai``), each a :class:`SpotBackend` subclass. A backend is configuration only,
**declared once** as a pydantic model: each argument is one annotated field with its
type, default and documentation (:func:`argument`), plus validators for what a type
cannot say. From that one declaration come the constructor (keyword arguments, checked
when the DAG file is parsed), :meth:`SpotBackend.validate` (the same checks again, on
rendered values), :meth:`SpotBackend.serialize` (JSON-safe kwargs for the trigger), the
``:param:`` lines of the class docstring, and the convenience operators
(:mod:`airflow_spot_training.operators.backend_operator`).

A backend keeps no per-run state: everything about one attempt lives in its typed
:class:`~airflow_spot_training.core.attempt.AttemptHandle` (``handle_type``).

Who calls what:

* the worker (sync): :meth:`launch`, :meth:`find`, :meth:`describe`, :meth:`stop`;
* the triggerer (async, never blocking the event loop): :meth:`poll`, :meth:`astop`.

Duties every backend has, and the conformance suite checks (``tests/conformance``):

* ``launch`` is idempotent on ``request.token``: a second call returns the attempt
  already started under that token (that is how a retry after a worker crash re-attaches);
* ``describe``/``poll`` only read: they never delete, cancel or terminate anything
  (releasing an ended attempt's resources is :meth:`stop`'s job, which callers invoke);
* no capacity (spot or on-demand, in every pool) raises :class:`CapacityUnavailable`;
  quota and permission errors raise :class:`CloudActionRequired` naming what to raise or grant.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import difflib
import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Mapping

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError
from pydantic_core import PydanticUndefined

from airflow_spot_training.core.attempt import (
    AttemptHandle,
    AttemptState,
    AttemptStatus,
    UnknownVersionError,
    check_version,
)
from airflow_spot_training.core.contract import DEFAULT_MASTER_PORT, Contract
from airflow_spot_training.core.folder_sync import FolderSync
from airflow_spot_training.core.policy import Capacity

__all__ = [
    "AttemptHandle", "AttemptLink", "AttemptState", "AttemptStatus", "BackendConfigError", "CapacityUnavailable",
    "CloudActionRequired", "LaunchRequest", "SpotBackend", "SpotCapacityUnavailable", "TrainingLog", "argument",
    "combine_gang", "resolve_backend",
]

#: version of ``serialize()`` output; kwargs without a version are version 1 (same fields)
CONFIG_VERSION = 2
_TEMPLATE = re.compile(r"{{|{%")
#: the names pydantic puts in an error's location for the alternatives of a union type
_TYPE_TAG = re.compile(r"^(constrained-\w+|function-[\w-]+\[.*\]|\w+\[.*\]|str|int|float|bool|list|dict|none)$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BackendConfigError(ValueError):
    """A backend was configured wrongly; the message names the argument and the fix."""


class CapacityUnavailable(RuntimeError):
    """No capacity of the requested kind in any pool right now.

    Every backend raises it for the same situation, spot or on-demand: the operator's
    policy decides whether to wait, escalate, or (on-demand, after ``max_capacity_wait``)
    fail naming the pools.

    :param message: what was tried and what each pool answered.
    :param capacity: the capacity asked for.
    :param pools_tried: one line per pool.
    :param pools_without_capacity: the pools (as :meth:`SpotBackend.capacity_ladder` names
        them) that said so, for pool health.
    """

    def __init__(self, message: str, pools_tried: list[str] | None = None,
                 capacity: Capacity = Capacity.SPOT, pools_without_capacity: list[str] | None = None) -> None:
        super().__init__(message)
        self.pools_tried = list(pools_tried or [])
        self.capacity = capacity
        self.pools_without_capacity = list(pools_without_capacity or [])


#: the name this exception had first; kept so user code catching it keeps working
SpotCapacityUnavailable = CapacityUnavailable


class CloudActionRequired(RuntimeError):
    """A cloud error the user must act on (a quota to raise, a permission to grant)."""


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one attempt.

    :param contract: the environment contract handed to the training.
    :param capacity: spot or on-demand.
    :param token: the attempt's idempotency token (stable for this attempt number).
    :param labels: identifiers to tag cloud resources with (dag_id, run_id, task_id,
        map_index, attempt, run_key, deployment).
    :param pool_order: the backend's ladder (:meth:`SpotBackend.capacity_ladder`) in the order
        pool health wants it tried; empty: the configured order.
    """

    contract: Contract
    capacity: Capacity
    token: str
    labels: dict[str, str] = field(default_factory=dict)
    pool_order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.contract.token:  # the training is told its own token
            object.__setattr__(self, "contract", dataclasses.replace(self.contract, token=self.token))
        elif self.contract.token != self.token:
            raise ValueError(f"the contract's token {self.contract.token!r} is not the request's {self.token!r}")

    @property
    def attempt(self) -> int:
        return self.contract.attempt

    @property
    def num_nodes(self) -> int:
        """Machines the attempt runs on together (the contract's ``num_nodes``)."""
        return self.contract.num_nodes

    def node_contract(self, rank: int, master_addr: str, master_port: int = DEFAULT_MASTER_PORT) -> Contract:
        """The contract handed to node ``rank`` of the gang (the request's own when it is one node)."""
        if not self.contract.is_gang:
            return self.contract
        return self.contract.for_node(rank, master_addr, master_port)


@dataclass(frozen=True)
class AttemptLink:
    """A page about one attempt (its console page, its logs), shown in the UI.

    :param label: what the page is, the same for every attempt (``EC2 instance``, ``Logs``).
    :param url: the page.
    """

    label: str
    url: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.label, "url": self.url}


#: lines of a failed attempt's training log copied into the task log
TAIL_LINES = 40


@dataclass(frozen=True)
class TrainingLog:
    """The last lines of one attempt's training output, as the backend could read them.

    :param source: where they come from, for the reader (``CloudWatch Logs group/stream``,
        ``EC2 console output of i-...``, a file path).
    :param lines: the lines, oldest first, not yet redacted.
    """

    source: str
    lines: list[str]

    @classmethod
    def from_text(cls, source: str, text: str, lines: int) -> TrainingLog:
        """The last ``lines`` non-empty lines of ``text``."""
        return cls(source, [line for line in text.splitlines() if line.strip()][-lines:])


def argument(default: Any = PydanticUndefined, doc: str = "", *, templated: bool = False,
             example: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """Declare one backend argument: its default, its documentation, whether it is templated.

    ``templated=True`` arguments may hold Jinja (``"{{ ds }}"``) in the DAG file; they are
    rendered per try like any operator field and validated once rendered. While the DAG
    file is parsed, the rest of the configuration is checked with ``example`` (or the
    default) standing in for a Jinja value, so a required templated argument needs an example.
    """
    extra: dict[str, Any] | None = None
    if templated:
        if example is PydanticUndefined and default is PydanticUndefined:
            raise TypeError("a required templated argument needs an example= value")
        extra = {"templated": True, "example": default if example is PydanticUndefined else example}
    return Field(default, description=doc, json_schema_extra=extra, **kwargs)


def is_template(value: Any) -> bool:
    """Whether ``value`` holds Jinja anywhere (strings inside lists and dicts too)."""
    if isinstance(value, str):
        return bool(_TEMPLATE.search(value))
    if isinstance(value, Mapping):
        return any(is_template(k) or is_template(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(is_template(v) for v in value)
    return False


class SpotBackend(BaseModel, ABC):
    """Base class of every backend: a pydantic model of its arguments plus the interface.

    Subclasses set :attr:`kind`, :attr:`handle_type` and :attr:`link_labels`, declare
    their arguments as fields with :func:`argument`, and implement the abstract methods.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, arbitrary_types_allowed=False,
                              use_attribute_docstrings=False, protected_namespaces=())

    kind: ClassVar[str] = "abstract"
    #: the typed handle ``launch`` returns
    handle_type: ClassVar[type[AttemptHandle]] = AttemptHandle
    #: seconds a launch typically costs before useful work starts (boot + restore);
    #: the default for the operator's ``restart_overhead``
    default_restart_overhead: ClassVar[float] = 60.0
    #: the labels of the pages :meth:`attempt_links` gives for each attempt (extra links)
    link_labels: ClassVar[tuple[str, ...]] = ()
    #: arguments that are Jinja-templated (derived from the fields marked ``templated``)
    template_fields: ClassVar[tuple[str, ...]] = ()
    #: URL schemes the checkpoint prefix may use; ``None``: any fsspec scheme or an absolute
    #: local path. Backends whose training runs on other machines refuse plain local paths
    #: (a ``file://`` URL says "a file system every machine mounts").
    checkpoint_schemes: ClassVar[frozenset[str] | None] = None
    #: the one argument that may also be given positionally (``LocalBackend([...])``), if any
    positional_argument: ClassVar[str | None] = None
    #: whether an attempt can run on several machines together (the operator's ``num_nodes``);
    #: a backend that can launches every node of ``request.num_nodes`` all-or-nothing, hands
    #: each its :meth:`Contract.for_node`, and ends the whole gang when one node is lost
    supports_gangs: ClassVar[bool] = False
    #: the argument that gives the backend its on-demand price (named by the spend cap's messages)
    price_argument: ClassVar[str] = "on_demand_price_per_hour"
    #: whether a succeeded attempt may still hold resources (a VM that has not deleted itself
    #: yet): the operator then calls :meth:`stop` after a success too, not only after other ends
    releases_after_success: ClassVar[bool] = False
    #: whether :meth:`poll` itself waits for the next status (a shared call every interval):
    #: the trigger then polls again at once instead of sleeping ``poll_interval`` between
    #: polls, so it hears of an end when the shared call returns, not up to an interval later
    poll_waits_for_next_status: ClassVar[bool] = False

    def __init__(self, *args: Any, **data: Any) -> None:
        cls = type(self)
        if args:
            if len(args) > 1 or cls.positional_argument is None or cls.positional_argument in data:
                raise BackendConfigError(f"{cls.__name__} takes keyword arguments ({', '.join(cls.model_fields)}).")
            data[cls.positional_argument] = args[0]
        # a required argument given as None is a missing argument, and says so
        data = {k: v for k, v in data.items() if not (v is None and k in cls.model_fields
                                                       and cls.model_fields[k].is_required())}
        templates = {name: data[name] for name in cls.template_fields if is_template(data.get(name))}
        for name in templates:  # checked with its example now, and for real once rendered (validate())
            data[name] = copy.deepcopy(cls.model_fields[name].json_schema_extra["example"])  # type: ignore[index]
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise BackendConfigError(describe_validation_error(cls, error)) from None
        for name, value in templates.items():
            object.__setattr__(self, name, value)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.template_fields = tuple(
            name for name, info in cls.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("templated")
        )
        cls.__doc__ = _with_param_lines(cls.__doc__ or "", cls)

    # -- copies: clients and caches are never copied, pickled or serialized -------------------
    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__pydantic_private__"] = self._fresh_private()
        return state

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> SpotBackend:
        clone = self.__class__.__new__(self.__class__)
        object.__setattr__(clone, "__dict__", copy.deepcopy(self.__dict__, memo))
        object.__setattr__(clone, "__pydantic_extra__", None)
        object.__setattr__(clone, "__pydantic_fields_set__", set(self.__pydantic_fields_set__))
        object.__setattr__(clone, "__pydantic_private__", self._fresh_private())
        return clone

    def _fresh_private(self) -> dict[str, Any] | None:
        if self.__private_attributes__ is None or not self.__private_attributes__:
            return None
        return {name: attr.get_default() for name, attr in self.__private_attributes__.items()}

    # -- configuration ---------------------------------------------------------------------
    def validate(self) -> None:  # type: ignore[override]  # pydantic's classmethod of the same name is v1 API
        """Check the (rendered) configuration again; raise :class:`BackendConfigError`."""
        unrendered = [name for name in self.template_fields if is_template(getattr(self, name))]
        if unrendered:
            raise BackendConfigError(
                f"{type(self).__name__}: {', '.join(unrendered)} still hold(s) Jinja; they are rendered when "
                "the task runs (validated then)."
            )
        type(self)(**{name: getattr(self, name) for name in type(self).model_fields})  # the parse-time checks

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """``(classpath, kwargs)``: JSON-safe arguments that rebuild this backend anywhere."""
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}", {"version": CONFIG_VERSION, **self.model_dump(mode="json")}

    @staticmethod
    def deserialize(classpath: str, kwargs: Mapping[str, Any]) -> SpotBackend:
        """Rebuild a backend from :meth:`serialize` output (version 1 kwargs, with no version, too)."""
        module_name, _, name = classpath.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name, None)
        if not (isinstance(cls, type) and issubclass(cls, SpotBackend)):
            raise BackendConfigError(f"{classpath} is not a SpotBackend")
        check_version(f"the serialized {name} configuration", kwargs, (1, CONFIG_VERSION))
        return cls(**{k: v for k, v in kwargs.items() if k != "version"})

    def default_checkpoint_prefix(self, task_prefix: str) -> str:
        """The prefix a task uses when the DAG gives none (``task_prefix`` is the task's own folder)."""
        return task_prefix

    def check_checkpoint_prefix(self, prefix: str) -> None:
        """Refuse a checkpoint prefix this backend's training could not use; the message says why."""
        scheme, sep, path = prefix.partition("://")
        if not sep:
            scheme, path = "", prefix
        if scheme and not _known_scheme(scheme):
            raise BackendConfigError(
                f"checkpoint_prefix {prefix!r}: {scheme}:// is not a filesystem fsspec knows; use s3://, gs://, "
                "file:// or another installed fsspec protocol."
            )
        parts = [part for part in path.split("/") if part]
        if "." in parts or ".." in parts:
            raise BackendConfigError(f"checkpoint_prefix {prefix!r} contains '.' or '..'; give a normalized path.")
        if not scheme and not prefix.startswith("/"):
            raise BackendConfigError(f"checkpoint_prefix {prefix!r} is a relative path; give an absolute path "
                                     "or an fsspec URL (s3://bucket/path, gs://bucket/path).")
        allowed = self.checkpoint_schemes
        if allowed is not None and scheme not in allowed:
            wanted = " or ".join(f"{s}://" for s in sorted(allowed))
            shown = f"a {scheme}:// URL" if scheme else "a local path"
            hint = "; file:// names a file system every machine mounts" if "file" in allowed else ""
            raise BackendConfigError(
                f"checkpoint_prefix {prefix!r} is {shown}, which {type(self).__name__}'s machines cannot reach: "
                f"use {wanted}{hint}."
            )

    def check_gang(self, num_nodes: int) -> None:
        """Refuse a gang of ``num_nodes`` this backend cannot run (:class:`BackendConfigError`, saying why)."""
        if num_nodes > 1 and not self.supports_gangs:
            raise BackendConfigError(f"{type(self).__name__} cannot launch several machines as one gang.")

    def input_uris(self) -> list[str]:
        """The training's input data this backend is configured with (lineage inputs); none by default."""
        return []

    def model_uri(self, checkpoint_prefix: str) -> str | None:
        """Where this backend's training leaves the trained model for a run, when it has such a place.

        ``None`` (the default): the model is the run's final checkpoint. A model location the cloud
        reports for the succeeded attempt (``details["model_uri"]``) takes precedence over both.
        """
        return None

    def load_handle(self, data: Mapping[str, Any] | AttemptHandle) -> AttemptHandle:
        """This backend's typed handle, from its stored dict."""
        return self.handle_type.from_dict(data)

    def checkpoint_storage_options(self) -> dict[str, Any]:
        """fsspec options for reading the checkpoint prefix from the worker and triggerer."""
        return {}

    def bind_poll_interval(self, seconds: float) -> None:
        """Called by the trigger with its poll interval (backends that batch polls use it)."""

    # -- worker side (sync) ------------------------------------------------------------------
    @abstractmethod
    def launch(self, request: LaunchRequest) -> AttemptHandle:
        """Start the attempt (idempotent on ``request.token``) and return its handle.

        Raise :class:`CapacityUnavailable` when the requested capacity cannot be had in any
        pool, :class:`CloudActionRequired` for quota and permission errors.
        """

    @abstractmethod
    def describe(self, handle: AttemptHandle) -> AttemptStatus:
        """The attempt's current status, read-only (worker: before deferring, blocking mode)."""

    def settle(self, handle: AttemptHandle, status: AttemptStatus) -> AttemptStatus:
        """How an ended attempt ended, from a provisional ``status`` (its ``to_settle`` is set).

        ``poll`` may leave the reads that tell an ended attempt's outcome (a result record)
        for the worker, so that the triggerer fires the moment it sees the end; the operator
        calls this before it records the attempt. :meth:`describe` returns settled statuses.
        The default has nothing to read.
        """
        return dataclasses.replace(status, to_settle=None)

    @abstractmethod
    def stop(self, handle: AttemptHandle) -> None:
        """Stop the attempt and release its capacity. Safe to call on a finished attempt."""

    def find(self, request: LaunchRequest) -> AttemptHandle | None:
        """The handle of an attempt already started for ``request.token``, if any."""
        return None

    def price_per_hour(self, handle: AttemptHandle | None, capacity: Capacity) -> float | None:
        """The price of the capacity an attempt runs on (or would run on), when known."""
        return None

    def configured_price(self, capacity: Capacity) -> float | None:
        """The price of ``capacity`` the configuration alone gives, without calling any API (parse time)."""
        return self.price_per_hour(None, capacity)

    def looks_prices_up(self) -> bool:
        """Whether prices missing from the configuration may still be found at run time (a pricing API)."""
        return False

    # -- pool health (backends with a ladder of pools) ------------------------------------------
    def capacity_ladder(self) -> list[str]:
        """The pools a launch tries, in the configured order, named as handles name them (``handle.pool``).

        Empty for a backend without a ladder: pool health then leaves it alone. A backend with
        one honours :attr:`LaunchRequest.pool_order`.
        """
        return []

    def pool_health_scope(self) -> str:
        """What makes two backends' pools the same pools (observations are shared within a scope)."""
        return self.kind

    def pools_without_capacity(self, handle: AttemptHandle) -> list[str]:
        """The pools a launch passed over for lack of capacity before it got ``handle``'s."""
        return []

    def spot_available(self, handle: AttemptHandle) -> bool | None:
        """Whether a spot launch would likely succeed now; ``None`` when the backend cannot tell.

        Asked while the on-demand attempt ``handle`` runs, for policies that move back to spot.
        """
        return None

    def attempt_links(self, handle: AttemptHandle) -> list[AttemptLink]:
        """Pages about this attempt (console, logs), one per label of :attr:`link_labels`."""
        return []

    def training_log(self, handle: AttemptHandle, lines: int = TAIL_LINES) -> TrainingLog | None:
        """The last ``lines`` lines of the attempt's training output; ``None`` when none can be read.

        Read on the worker after the attempt ended (a failed attempt's lines go to the task
        log, redacted); it may call the cloud, and it raises nothing the operator must handle
        beyond a plain exception (logged as a warning).
        """
        return None

    # -- triggerer side (async) --------------------------------------------------------------
    async def aspot_available(self, handle: AttemptHandle) -> bool | None:
        return await asyncio.to_thread(self.spot_available, handle)

    async def poll(self, handle: AttemptHandle) -> AttemptStatus:
        """The attempt's status, without blocking the event loop.

        The default runs :meth:`describe` in a thread; backends with async clients override it.
        """
        return await asyncio.to_thread(self.describe, handle)

    async def astop(self, handle: AttemptHandle) -> None:
        await asyncio.to_thread(self.stop, handle)


# -- gangs ---------------------------------------------------------------------------------------
def combine_gang(statuses: list[AttemptStatus]) -> AttemptStatus:
    """The status of a gang from its nodes' (rank order): one node reclaimed is the gang's one preemption.

    Shared by the backends that watch each node of a gang themselves (EC2, Compute Engine).

    A node that ended preempted, failed or stopped ends the gang so (the operator then releases
    the others); a node that succeeded waits for the others; all succeeded is a success.
    """
    if len(statuses) == 1:
        return statuses[0]
    ended = [(rank, s) for rank, s in enumerate(statuses) if s.is_final and s.state is not AttemptState.SUCCEEDED]
    preempted = [(rank, s) for rank, s in ended if s.state is AttemptState.PREEMPTED]
    first = statuses[0]
    details = {**first.details, "nodes": [s.to_dict() for s in statuses]}
    if preempted or ended:
        rank, status = (preempted or ended)[0]
        return AttemptStatus(state=status.state, reason=f"node {rank} of {len(statuses)}: {status.reason}",
                             preemptions=1 if preempted else 0, started_at=first.started_at,
                             ended_at=status.ended_at, details=details)
    if all(s.state is AttemptState.SUCCEEDED for s in statuses):
        return AttemptStatus(state=AttemptState.SUCCEEDED, reason=first.reason, started_at=first.started_at,
                             ended_at=max(s.ended_at or 0.0 for s in statuses) or None, details=details)
    live = [s for s in statuses if not s.is_final]
    state = AttemptState.PENDING if any(s.state is AttemptState.PENDING for s in live) else AttemptState.RUNNING
    return AttemptStatus(state=state, reason=live[0].reason, started_at=first.started_at, details=details)



# -- messages ------------------------------------------------------------------------------------
def describe_validation_error(cls: type[SpotBackend], error: ValidationError) -> str:
    """One message per bad argument, each naming the argument and how to fix it."""
    first_per_argument: dict[str, Mapping[str, Any]] = {}
    for problem in error.errors():  # a union type reports one problem per alternative: keep the first
        name = str(problem["loc"][0]) if problem.get("loc") else ""
        first_per_argument.setdefault(name, problem)
    return " ".join(_problem(cls, problem) for problem in first_per_argument.values())


def _problem(cls: type[SpotBackend], problem: Mapping[str, Any]) -> str:
    name = str(problem["loc"][0]) if problem.get("loc") else ""
    info = cls.model_fields.get(name)
    doc = (info.description or "").rstrip(".") if info is not None else ""
    message = str(problem.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    kind = problem.get("type")
    if kind == "missing":
        return f"{cls.__name__} needs {name}=...: {doc}."
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(name, list(cls.model_fields), n=1)
        hint = f" Did you mean {close[0]}=?" if close else ""
        return (f"{cls.__name__} has no argument {name}=.{hint} Its arguments are: "
                f"{', '.join(cls.model_fields)}.")
    if not name:
        return f"{cls.__name__}: {message}"
    shown = _shown(problem.get("input"))
    if kind == "value_error":  # our own validators: the message already says the fix
        return f"{cls.__name__}: {name}={shown} is invalid: {message}"
    location = "".join(f"[{part!r}]" for part in problem["loc"][1:] if not _TYPE_TAG.match(str(part)))
    return f"{cls.__name__}: {name}{location}={shown} is invalid ({message}). {name}: {doc}."


def _shown(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_param_lines(doc: str, cls: type[SpotBackend]) -> str:
    """The class docstring with a ``:param name:`` line for every argument it does not document."""
    lines = [doc.rstrip()]
    for name, info in cls.model_fields.items():
        if f":param {name}:" not in doc and info.description:
            suffix = " (templated)" if name in cls.template_fields else ""
            lines.append(f"    :param {name}: {info.description}{suffix}")
    return "\n".join(lines) + "\n"


def _known_scheme(scheme: str) -> bool:
    import fsspec
    from fsspec.registry import known_implementations

    return scheme in known_implementations or scheme in fsspec.available_protocols()


# -- shared argument types ---------------------------------------------------------------------
#: ``checkpoint_sync=``: ``True`` (defaults), a dict of :class:`FolderSync` settings, or an instance
CheckpointSync = Annotated[
    FolderSync | None,
    BeforeValidator(FolderSync.from_value),  # its ValueError names the setting and the fix
    PlainSerializer(lambda value: value.to_dict() if value is not None else None, return_type=dict | None),
]
CHECKPOINT_SYNC_DOC = ("run the training under the synced checkpoint folder (docs/synced-folder.md): True for the "
                       "defaults, a dict of FolderSync settings, or a FolderSync")


# -- shared validators -------------------------------------------------------------------------
def check_env_names(env: Mapping[str, Any], argument_name: str = "env") -> Mapping[str, Any]:
    """Environment variable names must be shell identifiers (they end up in scripts)."""
    bad = [name for name in env if not isinstance(name, str) or not ENV_NAME.match(name)]
    if bad:
        raise ValueError(
            f"{bad!r} are not environment variable names; {argument_name} keys must match "
            "[A-Za-z_][A-Za-z0-9_]* (letters, digits, underscores; not starting with a digit)."
        )
    return env


def resolve_backend(value: Any) -> SpotBackend:
    """Accept a backend instance, or a name with defaults (``"local"``); anything else is an error."""
    if isinstance(value, SpotBackend):
        return value
    from airflow_spot_training.backends import BACKENDS

    if isinstance(value, str) and value in BACKENDS:
        module_name, _, name = BACKENDS[value].rpartition(".")
        return getattr(importlib.import_module(module_name), name)()
    known = ", ".join(sorted(BACKENDS))
    raise BackendConfigError(
        f"backend={value!r} is not a backend. Pass a backend object such as "
        f"LocalBackend(command=[...]) or one of the names: {known}."
    )


__all__ += ["CONFIG_VERSION", "UnknownVersionError", "check_env_names", "describe_validation_error",
            "is_template"]
