"""Re-lay the flat ``l2r_submit`` package into sub-packages by job (issue 14, item 4).

Run at the repository root of a clean checkout::

    python scripts/relayout.py            # move, split model.py, rewrite imports, check
    python scripts/relayout.py --check    # only the checks (layer rule, torch-free CLI import, tree)

What it does, in order (each step is idempotent: a second run changes nothing):
  1. ``git mv`` each module of ``MOVES`` into its folder; creates the folders' ``__init__.py``;
  2. splits ``model.py`` into ``nets/`` modules by an AST extraction of its top-level definitions
     (``MODEL_SPLIT``), each with the imports its definitions use;
  3. rewrites every import of the package (relative, absolute, lazy ones inside functions), the
     ``model.NAME`` uses of the old ``model`` module, dotted ``l2r_submit.x`` strings (mock targets,
     docs) and ``l2r_submit/x.py`` paths in tests, scripts, benchmarks, .ci, Dockerfile, pyproject and docs;
  4. checks (``scripts/layer_check.py``): the CLI imports without torch, no module imports from a higher
     layer (``LAYERS``), and prints the tree. Modules not in ``MOVES`` stay at the top and are listed, so
     new ones are seen.

The tables and the old -> new names are in ``relayout_plan.py``, step 3 in ``relayout_rewrite.py``, the checks
in ``layer_check.py`` (which also runs them alone).

Exit status: 0 done and every check passes; 1 a check failed (the files are left re-laid for a look);
2 not run (not a repository root, uncommitted changes).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_check import LAYERS, PKG, checks, sh  # noqa: E402
from relayout_plan import FOLDER_DOCS, MODEL_DOCS, MODEL_REST, MOVES, Names, _defined, model_names  # noqa: E402
from relayout_rewrite import rewrite_all  # noqa: E402


def fail(msg: str, code: int = 2) -> None:
    print(f"relayout: {msg}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- step 1: moves
def move_modules(root: Path, names: Names) -> dict[Path, Path]:
    """git mv each listed module; returns new path -> old path for the files moved now."""
    pkg = root / PKG
    moved: dict[Path, Path] = {}
    for folder in LAYERS:
        if folder:
            init = pkg / folder / "__init__.py"
            if not init.exists():
                init.parent.mkdir(exist_ok=True)
                init.write_text(f'"""{FOLDER_DOCS[folder]}"""\n')
                sh("git", "add", str(init))
    for old, dest in MOVES.items():
        src = pkg / f"{old}.py"
        new = pkg / (f"{dest}.py" if "/" in dest else f"{dest}/{old}.py")
        if src.exists() and not new.exists():
            sh("git", "mv", str(src), str(new))
            moved[new] = src
    return moved


# ---------------------------------------------------------------- step 2: split model.py
def split_model(root: Path, home: dict[str, str]) -> dict[Path, Path]:
    """nets/<part>.py from model.py's top-level definitions, each with the imports it uses (written in
    model.py's own, flat form: step 3 rewrites them). Returns new path -> old path."""
    path = root / PKG / "model.py"
    if not path.exists():
        return {}
    src = path.read_text()
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    doc = ast.get_docstring(tree, clean=False)
    imports: list[tuple[ast.stmt, set[str]]] = []
    parts: dict[str, list[ast.stmt]] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = {(a.asname or a.name).split(".")[0] for a in node.names}
            imports.append((node, bound))
        elif _defined(node):
            if _defined(node) == ["__all__"]:
                continue  # each new module's public names are its top-level ones
            parts.setdefault(home[_defined(node)[0]], []).append(node)
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            fail(f"{path}: top-level statement at line {node.lineno} is neither an import nor a definition")
    out: dict[Path, Path] = {}
    for part, nodes in parts.items():
        used = {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}
        used |= {n.value.id for node in nodes for n in ast.walk(node)
                 if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
        used |= _annotation_names(nodes)
        text = f'"""{doc}"""\n\n' if part == MODEL_REST and doc else f'"""{MODEL_DOCS[part]}"""\n\n'
        head = []
        for node, bound in imports:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                head.append(ast.get_source_segment(src, node))
            elif bound & used:
                kept = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
                node2 = type(node)(**{**{f: getattr(node, f) for f in node._fields}, "names": kept})
                head.append(ast.unparse(node2))
        own = {name for node in nodes for name in _defined(node)}
        siblings = sorted(n for n in used if n in home and n not in own)
        if siblings:
            head.append(f"from .model import {', '.join(siblings)}")
        text += _group_imports(head) + "\n"
        previous_def = True
        for node in nodes:
            start = node.lineno - 1 - len(getattr(node, "decorator_list", []))
            while start > 0 and lines[start - 1].lstrip().startswith("#"):
                start -= 1
            is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            text += "\n\n" if is_def or previous_def else ""
            text += "".join(lines[start:node.end_lineno])
            previous_def = is_def
        new = root / PKG / "nets" / f"{part}.py"
        new.write_text(_tidy(text))
        out[new] = path
    sh("git", "rm", "-q", str(path))
    for new in out:
        sh("git", "add", str(new))
    return out


def _annotation_names(nodes: list[ast.stmt]) -> set[str]:
    """Names inside string annotations (``from __future__ import annotations`` keeps some as strings)."""
    found = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
                found.add(n.value)
    return found


def _group_imports(stmts: list[str]) -> str:
    future = [s for s in stmts if s.startswith("from __future__")]
    rel = [s for s in stmts if s.startswith("from .")]
    other = [s for s in stmts if s not in future and s not in rel]
    std = [s for s in other if s.split()[1].split(".")[0] in sys.stdlib_module_names]
    third = [s for s in other if s not in std]
    blocks = ["\n".join(b) for b in (future, std, third, rel) if b]
    return "\n\n".join(blocks) + "\n"


def _tidy(text: str) -> str:
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.rstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="Only the checks; change nothing.")
    args = ap.parse_args()
    root = Path.cwd()
    if not (root / PKG / "__init__.py").is_file() or not (root / ".git").exists():
        fail(f"{root}: not the repository root (no {PKG}/__init__.py or .git)")
    if args.check:
        return checks(root)
    if sh("git", "status", "--porcelain", "--untracked-files=no").strip():
        fail("uncommitted changes: commit or stash them first (the script's changes must be reviewable alone)")
    model_py = root / PKG / "model.py"
    if model_py.exists():
        home = model_names(model_py.read_text())
    else:
        home = {}
    names = Names(home)
    moved = move_modules(root, names)
    moved.update(split_model(root, home))
    changed = rewrite_all(root, names, moved)
    sh("git", "add", "-A", PKG)
    sh("git", "add", "-u")
    print(f"moved {len(moved)} file(s), rewrote {len(changed)} file(s)")
    return checks(root)


if __name__ == "__main__":
    sys.exit(main())
