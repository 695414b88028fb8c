"""The package's layer rule and the checks of its layout: no module imports from a higher layer (``LAYERS``),
the CLI imports without torch, no line over ``LINE`` characters, and the tree.

Run at the repository root::

    python scripts/layer_check.py         # the checks; exit 1 if one fails

``scripts/relayout.py`` (the one-time re-layout into layer folders) runs the same checks after its moves,
and ``--check`` runs them alone; ``tests/test_layout.py`` asserts the layer rule.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PKG = "l2r_submit"
LINE = 120
SCRIPTS = ("scripts/relayout.py", "scripts/relayout_plan.py", "scripts/relayout_rewrite.py",
           "scripts/layer_check.py")  # they name the old model module on purpose

# Layers, lowest first: a module imports only from its own folder or a folder of a lower layer ("" = top).
LAYERS: dict[str, int] = {"core": 1, "evaluation": 2, "nets": 2, "training": 3, "registration": 3, "recipe": 4,
                          "commands": 5, "": 6}

def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _abs_from(pkg_of_file: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names, resolved from the file's (old) package."""
    if node.level == 0:
        return node.module or ""
    base = pkg_of_file.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def folder_of(module: str) -> str | None:
    """'l2r_submit.core.io' -> 'core'; a top-level module -> ''; the package root, or not ours -> None."""
    parts = module.split(".")
    if parts[0] != PKG or len(parts) == 1:
        return None
    return parts[1] if parts[1] in LAYERS else ""


def layer_violations(root: Path) -> list[str]:
    """Every import of a package module from a higher layer or a sibling folder of the same layer."""
    out = []
    for path in sorted((root / PKG).rglob("*.py")):
        rel = path.relative_to(root)
        here = ".".join(rel.with_suffix("").parts)
        pkg = ".".join(rel.parent.parts)
        mine = folder_of(here)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                mod = _abs_from(pkg, node)
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    is_module = (root / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                        (root / Path(*sub.split("."))).is_dir()
                    targets.append(sub if is_module else mod)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in dict.fromkeys(targets):
                theirs = folder_of(t)
                if theirs is None or mine is None or theirs == mine:
                    continue
                if LAYERS[theirs] >= LAYERS[mine]:
                    out.append(f"{rel}:{node.lineno}: {mine or 'top'} (layer {LAYERS[mine]}) imports {t} "
                               f"({theirs or 'top'}, layer {LAYERS[theirs]})")
    return out


def cli_without_torch(root: Path) -> str | None:
    code = f"import sys; import {PKG}.cli; bad = [m for m in ('torch', 'numpy', 'scipy') if m in sys.modules]; " \
           "print(','.join(bad)); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    if r.returncode:
        return (r.stdout.strip() and f"importing {PKG}.cli imports {r.stdout.strip()}") or r.stderr.strip()[-500:]
    return None


def tree(root: Path) -> str:
    lines = []
    for path in sorted((root / PKG).rglob("*.py"), key=lambda p: (len(p.relative_to(root).parts), str(p))):
        lines.append(str(path.relative_to(root)))
    return "\n".join(lines)


def checks(root: Path) -> int:
    status = 0
    top = sorted(p.stem for p in (root / PKG).glob("*.py")
                 if p.stem not in ("__init__", "__main__", "cli", "container"))
    if top:
        print(f"modules left at the top (not in MOVES): {', '.join(top)}")
    try:
        tracked = sh("git", "ls-files").splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked source archive)
        tracked = [str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".md", ".py")]
    leftovers = [f"{f}:{i}" for f in tracked if Path(f).suffix in (".md", ".py")
                 and f not in SCRIPTS and (root / f).is_file()
                 for i, line in enumerate((root / f).read_text(errors="replace").splitlines(), 1)
                 if re.search(r"`model\.[a-z_]*[A-Z_]\w*`|`model\.[a-z]\w*`|\bmodel\.py\b", line)
                 and "model.X" not in line]
    if leftovers:
        print("manual step: the old model module named in text (read, and name the nets/ module): "
              + ", ".join(leftovers))
    bad = layer_violations(root)
    for line in bad:
        print(f"layer violation: {line}")
    print(f"layer rule: {len(bad)} violation(s)")
    status |= bool(bad)
    err = cli_without_torch(root)
    print(f"{PKG}.cli without torch: {'FAILED: ' + err if err else 'ok'}")
    status |= err is not None
    long = [f"{p.relative_to(root)}:{i}" for p in sorted((root / PKG).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > LINE]
    if long:
        print(f"lines over {LINE} characters (re-wrap by hand, most are docstrings naming a longer path): "
              f"{len(long)}: {', '.join(long)}")
    print("tree:\n" + tree(root))
    return status


def main() -> int:
    root = Path.cwd()
    if not (root / PKG / "__init__.py").is_file():
        print(f"layer_check: {root}: not the repository root (no {PKG}/__init__.py)", file=sys.stderr)
        return 2
    return checks(root)


if __name__ == "__main__":
    sys.exit(main())
