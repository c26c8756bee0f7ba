"""Kill this process at the N-th filesystem operation, for the fault-injection child processes.

:func:`install` counts at the OS boundary: opening a file for writing under ``root``, each
write to it (the fatal write writes half its bytes first), close, fsync, rename/replace,
remove, unlink and rmtree, and calls ``os._exit(137)`` at operation ``die_at`` (``0``: never;
the count then says how many operations the work took).
"""

from __future__ import annotations

import builtins
import os
import shutil
from typing import Any, Callable


class Counter:
    def __init__(self, die_at: int) -> None:
        self.die_at, self.count = die_at, 0

    def tick(self, partial: Callable[[], Any] | None = None) -> None:
        self.count += 1
        if self.die_at and self.count == self.die_at:
            if partial is not None:
                partial()
            os._exit(137)


class _Writer:
    def __init__(self, f: Any, counter: Counter) -> None:
        self._f, self._counter = f, counter

    def write(self, data: Any) -> int:
        self._counter.tick(partial=lambda: (self._f.write(data[: max(1, len(data) // 2)]), self._f.flush()))
        return self._f.write(data)

    def close(self) -> None:
        self._counter.tick()
        return self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def install(die_at: int, root: str, *, paths_under_root_only: bool) -> Counter:
    """Count (and die at) filesystem operations from now on.

    :param root: files opened for writing are counted only under it.
    :param paths_under_root_only: count rename, remove and rmtree only under ``root`` too
        (else every one of them, wherever it is).
    """
    counter = Counter(die_at)
    real_open = builtins.open

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, str) and file.startswith(root) and any(c in mode for c in "wax+"):
            counter.tick()
            return _Writer(f, counter)
        return f

    def wrap(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not paths_under_root_only or (args and str(args[0]).startswith(root)):
                counter.tick()
            return real(*args, **kwargs)

        setattr(module, name, wrapped)

    builtins.open = open_
    for module, name in [(os, "replace"), (os, "rename"), (os, "remove"), (os, "unlink"), (shutil, "rmtree")]:
        wrap(module, name)
    real_fsync = os.fsync
    os.fsync = lambda fd: (counter.tick(), real_fsync(fd))[1]
    return counter
