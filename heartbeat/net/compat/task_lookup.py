"""O(1) parent-task lookup for py-libp2p's trio service manager.

Upstream bug: py-libp2p 0.8.1's `TrioManager._find_parent_task`
(libp2p/tools/anyio_service/trio_manager.py) walks every task of the manager's tree to
find the calling task's parent; `run_task` / `run_child_service` call it twice per
accepted connection, so accepting costs O(connections) and one aggregator stalls near
5,000 connections (docs/CAPACITY.md). Retired by: an upstream manager that keeps a
trio-task -> FunctionTask index (or passes the parent explicitly).

No seam: the manager class is created inside the swarm's service machinery and is not a
host option, so the method is replaced on the class (and the `FunctionTask.trio_task`
property, to index every task when its trio task is set). `uninstall()` puts both back.

The replacement gives the walk's answer from an index; the walk's "is it in THIS
manager's tree" condition is checked along the task's parent chain, O(depth).
"""

from __future__ import annotations

import inspect
import logging
import weakref
from typing import Any

from heartbeat.net.errors import CompatError

__all__ = ["install", "installed", "original_find_parent_task", "uninstall"]

log = logging.getLogger(__name__)

NAME = "task_lookup"
_FAST_LOOKUP_MARK = "_fil_heartbeat_fast_task_lookup"
#: `_find_parent_task` of py-libp2p itself, kept for the tests' equivalence check.
original_find_parent_task: Any = None


#: (TrioManager, FunctionTask, original trio_task property) while installed.
_installed: tuple[Any, Any, Any] | None = None


def _task_lookup_internals() -> tuple[Any, Any] | str:
    """(TrioManager, FunctionTask) if their internals are the ones of 0.8.1, else why not."""
    try:
        from libp2p.tools.anyio_service.trio_manager import TrioManager
        from libp2p.tools.anyio_service.trio_tasks import FunctionTask
    except ImportError as exc:
        return f"import failed: {exc}"
    find = TrioManager.__dict__.get("_find_parent_task")
    if not inspect.isfunction(find):
        return "TrioManager._find_parent_task missing"
    if list(inspect.signature(find).parameters) != ["self", "trio_task"]:
        return f"_find_parent_task signature {inspect.signature(find)}"
    # The walk this replaces: the manager's root tasks, FunctionTask.iterate_tasks,
    # has_trio_task, trio_task; nothing else.
    names = set(find.__code__.co_names)
    expected = {"FunctionTask", "iterate_tasks", "_root_tasks", "has_trio_task", "trio_task"}
    if names != expected:
        return f"_find_parent_task body differs (uses {sorted(names)})"
    prop = FunctionTask.__dict__.get("trio_task")
    if not isinstance(prop, property) or prop.fget is None or prop.fset is None:
        return "FunctionTask.trio_task is not a settable property"
    if "_trio_task" not in FunctionTask.__dict__ or "has_trio_task" not in FunctionTask.__dict__:
        return "FunctionTask._trio_task/has_trio_task missing"
    if "trio_task" not in FunctionTask.run.__code__.co_names:
        return "FunctionTask.run no longer sets trio_task"
    return TrioManager, FunctionTask


def installed() -> bool:
    return _installed is not None


def install() -> None:
    """Replace py-libp2p's O(n) `TrioManager._find_parent_task` by an O(1) lookup.

    Same answer as the tree walk (tests/test_p2p_tasks.py), idempotent; safe before or
    after hosts start (a manager's existing tasks are indexed by one walk on its first
    lookup). Raises `CompatError` if the internals are not 0.8.1's.
    """
    global original_find_parent_task, _installed
    if _installed is not None:
        return
    found = _task_lookup_internals()
    if isinstance(found, str):
        raise CompatError("libp2p.tools.anyio_service.trio_manager", found)
    manager_cls, task_cls = found
    original = manager_cls._find_parent_task
    original_find_parent_task = original
    by_trio: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
    indexed: weakref.WeakSet[Any] = weakref.WeakSet()
    prop = task_cls.__dict__["trio_task"]
    set_trio_task = prop.fset

    def indexing_setter(self: Any, value: Any) -> None:
        set_trio_task(self, value)
        by_trio[value] = self

    def in_tree(manager: Any, task: Any) -> bool | None:
        """Is `task` reachable from `manager`'s root tasks? None: chain too deep."""
        for _ in range(256):
            parent = task.parent
            if parent is None:
                return task in manager._root_tasks
            if task not in parent.children:
                return False
            task = parent
        return None

    def find_parent_task(self: Any, trio_task: Any) -> Any:
        if self not in indexed:
            # Tasks that started before the install (or before this manager's first
            # lookup under it) are indexed once.
            for task in task_cls.iterate_tasks(*self._root_tasks):
                if task.has_trio_task:
                    by_trio.setdefault(task.trio_task, task)
            indexed.add(self)
        task = by_trio.get(trio_task)
        if task is None or task.trio_task is not trio_task:
            return None
        reachable = in_tree(self, task)
        if reachable is None:  # never seen in 0.8.1: fall back to the walk
            return original(self, trio_task)
        return task if reachable else None

    setattr(find_parent_task, _FAST_LOOKUP_MARK, original)
    task_cls.trio_task = property(prop.fget, indexing_setter, prop.fdel, prop.__doc__)
    manager_cls._find_parent_task = find_parent_task
    _installed = (manager_cls, task_cls, prop)


def uninstall() -> None:
    """Put py-libp2p's walk and `FunctionTask.trio_task` back (existing index dropped)."""
    global original_find_parent_task, _installed
    if _installed is None:
        return
    manager_cls, task_cls, prop = _installed
    manager_cls._find_parent_task = original_find_parent_task
    task_cls.trio_task = prop
    original_find_parent_task = None
    _installed = None
