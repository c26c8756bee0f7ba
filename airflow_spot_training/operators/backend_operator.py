"""One pattern for every convenience operator: a backend's arguments as the operator's own.

A convenience operator is a :class:`SpotTrainingOperator` whose backend is built from
its keyword arguments::

    class EC2SpotTrainingOperator(BackendOperator):
        backend_class = EC2SpotBackend

``EC2SpotTrainingOperator(task_id=..., command=..., instance_types=[...], max_preemptions=2)``
hands every argument the backend declares to ``EC2SpotBackend`` and the rest to
``SpotTrainingOperator``. Nothing is written twice: the backend's declaration
(:mod:`airflow_spot_training.backends.base`) gives the arguments, their checks, their
templating and the ``:param:`` lines of the operator's docstring; the backend gives the
per-attempt links (:meth:`~airflow_spot_training.backends.base.SpotBackend.attempt_links`).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_spot_training.backends.base import BackendConfigError, SpotBackend
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError, SpotTrainingOperator


class BackendOperator(SpotTrainingOperator):
    """A :class:`SpotTrainingOperator` that builds its backend from its own keyword arguments.

    Subclasses set :attr:`backend_class`; see the module docstring.
    """

    backend_class: ClassVar[type[SpotBackend]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        backend_class = cls.__dict__.get("backend_class")
        if backend_class is None:
            return
        clash = set(backend_class.model_fields) & _operator_arguments()
        if clash:
            raise TypeError(f"{backend_class.__name__} arguments {sorted(clash)} clash with operator arguments")
        lines = [line for line in (backend_class.__doc__ or "").splitlines() if ":param " in line]
        cls.__doc__ = (cls.__doc__ or "").rstrip() + (
            f"\n\n    Arguments of :class:`~{backend_class.__module__}.{backend_class.__qualname__}` "
            "(every other keyword goes to :class:`SpotTrainingOperator`):\n\n" + "\n".join(lines) + "\n"
        )

    def __init__(self, **kwargs: Any) -> None:
        cls = type(self)
        task_id = kwargs.get("task_id", "?")
        if "backend" in kwargs:
            raise SpotTrainingConfigError(
                f"{task_id}: {cls.__name__} builds its own {cls.backend_class.__name__}; pass its arguments "
                f"({', '.join(list(cls.backend_class.model_fields)[:4])}, ...) directly instead of backend=."
            )
        backend_kwargs = {name: kwargs.pop(name) for name in cls.backend_class.model_fields if name in kwargs}
        try:
            backend = cls.backend_class(**backend_kwargs)
        except BackendConfigError as e:
            raise SpotTrainingConfigError(f"{task_id}: {e}") from e
        super().__init__(backend=backend, **kwargs)


def _operator_arguments() -> set[str]:
    names: set[str] = set()
    for klass in (SpotTrainingOperator, BaseOperator):
        names |= {name for name in inspect.signature(klass.__init__).parameters if name not in ("self", "kwargs")}
    return names
