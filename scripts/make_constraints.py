"""Write constraints.txt: the exact versions, as installed in an environment, of requirements.txt's
packages and everything they pull in (and pytest's, for the test extra), torch and its own
dependencies left out (the container keeps its base image's torch).

    .venv/bin/python scripts/make_constraints.py [--out constraints.txt]

Run it with the environment to lock (it reads that interpreter's installed metadata); the Dockerfile
installs with ``pip install -c constraints.txt -r requirements.txt``, so two builds a month apart get
the same versions. requirements.txt keeps the lower bounds.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import click
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = {"torch"}  # and, through it, its own dependencies unless another package needs them too


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Every installed distribution the roots need (markers evaluated here), name -> version.

    Raises:
        click.ClickException: a needed package that is not installed.
    """
    env = default_environment()
    found: dict[str, str] = {}
    todo = [r for r in roots if _norm(r.name) not in LEFT_OUT]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in found or name in LEFT_OUT:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise click.ClickException(f"{req.name}: needed but not installed in {sys.prefix}") from None
        found[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({**env, "extra": ""}):
                todo.append(sub)
    return found


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "constraints.txt", show_default=True)
def main(out: Path) -> None:
    pins = closure([*requirements(ROOT / "requirements.txt"), Requirement("pytest")])
    py = ".".join(map(str, sys.version_info[:2]))
    lines = ["# Exact versions for the container (pip install -c constraints.txt -r requirements.txt), written by",
             f"# scripts/make_constraints.py from the environment it ran in (Python {py}); torch and its own",
             "# dependencies are left out: the base image's torch is kept. requirements.txt keeps the lower bounds.",
             *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    out.write_text("\n".join(lines) + "\n")
    click.echo(f"wrote {out}: {len(pins)} packages")


if __name__ == "__main__":
    main()
