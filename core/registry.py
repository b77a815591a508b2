"""Connector discovery through the `kanal.connectors` entry point group.

A custom connector is a separate pip package that declares, in its
pyproject.toml::

    [project.entry-points."kanal.connectors"]
    mysystem = "mypackage:CONNECTOR"      # a kanal.core.connector.ConnectorSpec

A connector package that fails to import (a missing dependency, a bug, an
incompatible Kanal) must not break every command: it is named once in a
warning on stderr, every job that does not use it runs, and a job that does
gets a job-file error naming the package and its import error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from kanal.core.connector import ConnectorSpec
from kanal.core.errors import ConfigError
from kanal.core.places import did_you_mean

GROUP = "kanal.connectors"
log = logging.getLogger("kanal.registry")


@dataclass(frozen=True)
class Broken:
    """A connector whose entry point could not be loaded."""

    name: str
    package: str
    target: str
    error: str

    def describe(self) -> str:
        return f"connector {self.name!r} (package {self.package}, {self.target}) cannot be loaded: {self.error}"


@cache
def _discover() -> tuple[dict[str, ConnectorSpec], dict[str, Broken]]:
    found: dict[str, ConnectorSpec] = {}
    broken: dict[str, Broken] = {}
    for ep in entry_points(group=GROUP):
        try:
            spec = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code at import
            broken[ep.name] = Broken(ep.name, _package(ep), ep.value, f"{type(exc).__name__}: {exc}")
            continue
        if not isinstance(spec, ConnectorSpec):
            broken[ep.name] = Broken(ep.name, _package(ep), ep.value, f"it is a {type(spec).__name__}, not a kanal ConnectorSpec")
            continue
        found[ep.name] = spec
    for problem in broken.values():
        log.warning("%s; commands that do not use it work normally", problem.describe())
    return dict(sorted(found.items())), broken


def _package(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else ep.value.split(":")[0].split(".")[0]


def installed() -> dict[str, ConnectorSpec]:
    """All installed connectors that load, by name (discovered once per process)."""
    return _discover()[0]


def broken() -> dict[str, Broken]:
    """Installed connectors whose package failed to import, by name."""
    return _discover()[1]


def get(name: str) -> ConnectorSpec:
    """The connector called `name`; the error lists the installed ones, or says why it did not load."""
    connectors, failed = _discover()
    if name in failed:
        raise ConfigError(f"{failed[name].describe()}; fix or reinstall that package")
    if name not in connectors:
        hint = did_you_mean(name, connectors)
        raise ConfigError(f"unknown connector {name!r} (installed: {', '.join(connectors) or 'none'}){hint}")
    return connectors[name]
