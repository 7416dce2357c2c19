"""Regenerate docs/cli.md from the CLI itself, with Typer's own generator (``typer ... utils docs``).

    .venv/bin/python docs/make_cli_md.py           # rewrite docs/cli.md
    .venv/bin/python docs/make_cli_md.py --check   # exit 1 if docs/cli.md is stale

tests/test_docs.py fails when docs/cli.md differs from what this prints.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CLI_MD = Path(__file__).resolve().parent / "cli.md"
HEADER = "<!-- Generated from the CLI by `.venv/bin/python docs/make_cli_md.py`; do not edit by hand. -->\n\n"


def cli_reference() -> str:
    """The Markdown reference of every ``brainage`` command, as Typer writes it."""
    command = [sys.executable, "-m", "typer", "brainage.cli", "utils", "docs", "--name", "brainage", "--title", "brainage command-line reference"]
    docs = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return HEADER + docs.strip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/cli.md is up to date")
    args = parser.parse_args()
    text = cli_reference()
    if args.check:
        stale = not CLI_MD.is_file() or CLI_MD.read_text(encoding="utf-8") != text
        print(f"{CLI_MD} is {'stale: run docs/make_cli_md.py' if stale else 'up to date'}")
        return int(stale)
    CLI_MD.write_text(text, encoding="utf-8")
    print(f"wrote {CLI_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
