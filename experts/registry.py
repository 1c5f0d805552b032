"""Which experts exist, by name and alias.

Experts are found through the ``vision_router.experts`` entry-point group. An entry point names
either an :class:`~experts.base.Expert` subclass or a callable ``register(register)`` that calls
``register(ExpertClass)`` for each expert it provides. The built-in experts are registered the
same way (see pyproject.toml), so the third-party path is the one the project itself uses.

Set ``VISION_ROUTER_EXPERTS=ocr,detect`` to restrict which entry points load.
"""

from __future__ import annotations

import logging
import os
import threading
from importlib.metadata import entry_points
from typing import Any

from experts.base import Expert
from experts.errors import ExpertError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vision_router.experts"


class Registry:
    """Expert classes by name, plus one configured instance per name per process."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Expert]] = {}
        self._aliases: dict[str, str] = {}
        self._instances: dict[str, Expert] = {}
        self._config: dict[str, dict[str, Any]] = {}
        self._load_errors: dict[str, str] = {}
        # Why an expert cannot run here (None: it can), known once and kept until refresh_availability().
        self._avail: dict[str, str | None] = {}
        self._lock = threading.RLock()

    # --- registration -------------------------------------------------------------------------
    def register(self, cls: type[Expert]) -> type[Expert]:
        """Register an expert class (usable as a decorator). A later registration of the same name
        replaces the earlier one."""
        if not (isinstance(cls, type) and issubclass(cls, Expert)) or not cls.name:
            raise TypeError(f"{cls!r} is not an Expert subclass with a name")
        with self._lock:
            self._classes[cls.name] = cls
            self._instances.pop(cls.name, None)
            self._avail.pop(cls.name, None)
            for alias in (cls.name, *cls.aliases):
                self._aliases[alias.lower()] = cls.name
        return cls

    def unregister(self, name: str) -> None:
        with self._lock:
            self._classes.pop(name, None)
            self._instances.pop(name, None)
            self._avail.pop(name, None)
            for alias in [a for a, n in self._aliases.items() if n == name]:
                del self._aliases[alias]

    def load_entry_points(self) -> None:
        """Load every expert advertised in the entry-point group; a broken plugin is logged, not fatal."""
        allowed = os.environ.get("VISION_ROUTER_EXPERTS")
        allow = {a.strip() for a in allowed.split(",") if a.strip()} if allowed else None
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and ep.name not in allow:
                continue
            try:
                obj = ep.load()
                if isinstance(obj, type) and issubclass(obj, Expert):
                    self.register(obj)
                elif callable(obj):
                    obj(self.register)
                else:
                    raise TypeError(f"entry point {ep.value} is neither an Expert nor a register hook")
            except Exception as exc:  # a third-party plugin must not take the router down
                self._load_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("could not load expert plugin %s (%s): %s", ep.name, ep.value, exc)

    # --- lookup -------------------------------------------------------------------------------
    def resolve(self, name: str) -> str | None:
        """Canonical expert name for a name or alias (case-insensitive), or None."""
        return self._aliases.get(name.strip().lower())

    def names(self) -> list[str]:
        return sorted(self._classes)

    def expert_class(self, name: str) -> type[Expert]:
        canonical = self.resolve(name)
        if canonical is None:
            raise ExpertError(f"unknown expert {name!r} (available: {', '.join(self.names()) or 'none'})")
        return self._classes[canonical]

    def configure(self, name: str, **config: Any) -> None:
        """Set an expert's configuration (engine, model paths, service URL...). Takes effect on the
        next :meth:`get`; the same configuration again keeps the loaded instance (and its model)."""
        with self._lock:
            canonical = self.resolve(name) or name
            if self._config.get(canonical) == config:
                return
            self._config[canonical] = dict(config)
            self._instances.pop(canonical, None)
            self._avail.pop(canonical, None)  # another model or URL: checked again when next asked

    def get(self, name: str) -> Expert:
        """The process-wide instance of an expert (created on first use, engine loaded lazily)."""
        cls = self.expert_class(name)
        with self._lock:
            inst = self._instances.get(cls.name)
            if inst is None:
                inst = self._build(cls)
                self._instances[cls.name] = inst
            return inst

    def _build(self, cls: type[Expert]) -> Expert:
        config = dict(self._config.get(cls.name, {}))
        url = config.pop("url", None)
        if url:
            # The expert runs as a service elsewhere (experts.service): call it by URL.
            from experts.remote import RemoteExpert

            if issubclass(cls, RemoteExpert):
                return cls(url=url, **config)
            return RemoteExpert(cls.name, url, local_class=cls, **config)
        return cls(**config)

    def add_remote(self, name: str, url: str, *, aliases: tuple[str, ...] = (), **config: Any) -> type[Expert]:
        """Use the expert service at ``url`` for ``name``. An expert installed here keeps its class
        (and its argument validation) and is called by URL; one not installed here is registered as a
        remote-only expert whose aliases and schema come from the service's ``/v1/info``."""
        from experts.remote import remote_expert_class

        with self._lock:
            canonical = self.resolve(name)
            if canonical is not None:
                self.configure(canonical, **{**self._config.get(canonical, {}), **config, "url": url})
                return self._classes[canonical]
        known = {k: config[k] for k in ("connect_timeout", "token") if k in config}
        cls = remote_expert_class(name, url, aliases=aliases, **known)
        with self._lock:
            self.register(cls)
            self._config[cls.name] = dict(config)
        return cls

    # --- status -------------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        """An expert's :meth:`~experts.base.Expert.status`, never raising: a broken status is ``ok: False``
        with the error. Imports no engine (status uses find_spec, metadata and files on disk)."""
        try:
            return dict(self.get(name).status())
        except Exception as exc:  # status must never take a listing down
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    # --- availability: known once, refreshed on demand ----------------------------------------------
    def unavailable(self, name: str) -> str | None:
        """Why ``name`` cannot run here (one line), or None when it can. Checked once per expert (its
        :meth:`status`: files on disk, package metadata, a remote service asked once) and remembered,
        with failures found later (:meth:`mark_unavailable`), until :meth:`refresh_availability`:
        a request never rediscovers it, and never waits on a download."""
        canonical = self.resolve(name)
        if canonical is None:
            return f"unknown expert {name!r} (available: {', '.join(self.runnable()) or 'none'})"
        with self._lock:
            if canonical in self._avail:
                return self._avail[canonical]
        status = self.status(canonical)  # outside the lock: a remote expert's check is a network call
        why = None if status.get("ok") else unavailable_reason(status)
        with self._lock:
            return self._avail.setdefault(canonical, why)

    def can_run(self, name: str) -> bool:
        """Whether ``name`` (a name or alias) is installed, has its weights here and, when remote, answered."""
        return self.unavailable(name) is None

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Remember that ``name`` cannot run (its engine or weights turned out missing when it loaded):
        it is skipped at once from now on, until :meth:`refresh_availability`."""
        canonical = self.resolve(name)
        if canonical is not None:
            with self._lock:
                self._avail[canonical] = reason

    def refresh_availability(self) -> dict[str, str | None]:
        """Check every expert again (weights downloaded since, a service back up); returns
        :meth:`availability`."""
        with self._lock:
            self._avail.clear()
        return self.availability()

    def availability(self) -> dict[str, str | None]:
        """Every expert, by name: None when it can run here, else why not."""
        return {n: self.unavailable(n) for n in self.names()}

    def runnable(self, names: list[str] | None = None) -> list[str]:
        """The experts (of ``names``, default all) that can run here: what every door offers (the
        protocol prompt, tools, MCP, `serve`'s start-up line, health)."""
        wanted = self.names() if names is None else names
        return [n for n in wanted if self.resolve(n) is not None and self.can_run(n)]

    @property
    def load_errors(self) -> dict[str, str]:
        return dict(self._load_errors)


def unavailable_reason(status: dict[str, Any]) -> str:
    """Why an expert whose status is not ok cannot run, in one line (every [N/A] gets one)."""
    for key in ("error", "weights", "reason", "hint"):
        if status.get(key):
            return f"weights: {status[key]}" if key == "weights" else str(status[key])
    return "not available (the expert's status gives no reason)"


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry, with entry points loaded on first use."""
    global _default
    with _default_lock:
        if _default is None:
            reg = Registry()
            reg.load_entry_points()
            _default = reg
        return _default
