"""Print pip constraints pinning every dependency of pyproject.toml to its declared floor.

``python tools/min_constraints.py [--extra dev] [--skip torch] > constraints.txt``, then
``pip install -c constraints.txt -e '.[dev]'`` installs the oldest versions the package claims to
support. A floor pins its release and that release's post-releases (``lightning>=2.6`` becomes
``lightning==2.6.0.*``, which matches 2.6.0 and 2.6.0.post0, not 2.6.1). A dependency without a
``>=`` floor is an error: every floor must be tested.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def floors(pyproject: Path, extras: list[str]) -> dict[str, str]:
    """Dependency name → its ``>=`` floor, for the core dependencies and the named extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    result: dict[str, str] = {}
    for requirement in requirements:
        match = _FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: {requirement!r} has no '>=' floor")
        result[match.group(1).lower()] = match.group(2)
    return result


def pin(version: str) -> str:
    """The constraint on a floor's own release: ``2.6`` → ``==2.6.0.*``, ``1.14.7`` → ``==1.14.7.*``."""
    parts = version.split(".")
    return "==" + ".".join(parts + ["0"] * (3 - len(parts))) + ".*"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="optional-dependency group to include")
    parser.add_argument("--skip", action="append", default=[], help="dependency to leave unpinned")
    args = parser.parse_args(argv)
    for name, version in floors(PYPROJECT, args.extra).items():
        if name not in args.skip:
            sys.stdout.write(f"{name}{pin(version)}\n")


if __name__ == "__main__":
    main()
