"""`kanal connector new`: a pip package for a custom connector that installs and passes its tests as generated.

The package talks to a small HTTP JSON API through Kanal's HTTP kit
(`kanal.core.http`) and cursor reader (`kanal.core.cursor`), ships a
simulator of that API, and tests itself with the conformance kit
(`kanal.testing`). An author replaces the API's endpoints and fields with
their system's, keeping the tests green.

Templates live in `templates/connector/` (package data). Placeholders are
`{{name}}`-style; a line `# kanal-template: source` (or `sink`) starts lines
that only a connector with that side gets, `# kanal-template: end` ends them,
and the marker lines themselves are never written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kanal.core import registry
from kanal.core.errors import ConfigError

TEMPLATES = Path(__file__).parent / "templates" / "connector"
NAME = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
_MARKER = re.compile(r"^# kanal-template: (source|sink|end)$")
_ONLY = {"source.py.tmpl": "source", "sink.py.tmpl": "sink"}


@dataclass(frozen=True)
class Created:
    """What `new_connector` wrote: the package folder and its files (relative to it)."""

    folder: Path
    name: str
    package: str
    files: list[Path]


def new_connector(name: str, parent: Path, *, source: bool, sink: bool) -> Created:
    """Write the package of connector `name` into `parent`/kanal-<name>; neither side given means both."""
    if not NAME.match(name):
        raise ConfigError(
            f"connector name {name!r}: use 2 to 40 lower-case letters, digits and underscores, starting with a letter "
            "(it is the `connector:` value in job files and part of the Python package name)"
        )
    if name in registry.installed():
        raise ConfigError(f"a connector named {name!r} is already installed; choose another name")
    sides = {side for side, wanted in (("source", source), ("sink", sink)) if wanted} or {"source", "sink"}
    folder = parent / f"kanal-{name.replace('_', '-')}"
    if folder.exists():
        raise ConfigError(f"{folder} already exists; choose another name or --dir, or remove it")
    values = _values(name, sides)
    written = []
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        only = _ONLY.get(template.name)
        if only is not None and only not in sides:
            continue
        relative = template.relative_to(TEMPLATES).with_suffix("")
        if relative.parts[0] == "package":
            relative = Path(values["package"], *relative.parts[1:])
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(template.read_text(), values, sides))
        written.append(relative)
    return Created(folder, name, values["package"], written)


def _values(name: str, sides: set[str]) -> dict[str, str]:
    contracts = [c for side, c in (("source", "SourceContract"), ("sink", "SinkContract")) if side in sides]
    return {
        "name": name,
        "package": f"kanal_{name}",
        "dist": f"kanal-{name.replace('_', '-')}",
        "Class": "".join(part.capitalize() for part in name.split("_")),
        "upper": name.upper(),
        "sides": " and ".join(side for side in ("source", "sink") if side in sides),
        "contracts": ", ".join(contracts),
        "spec_imports": "Capabilities, ConnectorSpec" + (", DeltaKind" if "source" in sides else ""),
    }


def render(text: str, values: dict[str, str], sides: set[str]) -> str:
    """The template's text for a connector with `sides`, placeholders filled in."""
    kept, keep = [], True
    for line in text.splitlines(keepends=True):
        marker = _MARKER.match(line.strip())
        if marker:
            keep = marker.group(1) == "end" or marker.group(1) in sides
            continue
        if keep:
            kept.append(line)
    out = "".join(kept)
    for key, value in values.items():
        out = out.replace("{{" + key + "}}", value)
    return out
