"""Connector discovery through the `kanal.connectors` entry point group.

A custom connector is a separate pip package that declares, in its
pyproject.toml::

    [project.entry-points."kanal.connectors"]
    mysystem = "mypackage:CONNECTOR"      # a kanal.core.connector.ConnectorSpec
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from kanal.core.connector import ConnectorSpec
from kanal.core.errors import ConfigError

GROUP = "kanal.connectors"


@cache
def installed() -> dict[str, ConnectorSpec]:
    """All installed connectors by name (loaded once per process)."""
    found: dict[str, ConnectorSpec] = {}
    for ep in entry_points(group=GROUP):
        spec = ep.load()
        if not isinstance(spec, ConnectorSpec):
            raise ConfigError(f"entry point {ep.name!r} ({ep.value}) is not a kanal ConnectorSpec")
        found[ep.name] = spec
    return dict(sorted(found.items()))


def get(name: str) -> ConnectorSpec:
    """The connector called `name`; the error lists the installed ones."""
    connectors = installed()
    if name not in connectors:
        raise ConfigError(f"unknown connector {name!r} (installed: {', '.join(connectors) or 'none'})")
    return connectors[name]
