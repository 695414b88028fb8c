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
  4. checks: the CLI imports without torch, no module imports from a higher layer (``LAYERS``), and prints
     the tree. Modules not in ``MOVES`` stay at the top and are listed, so new ones are seen.

Exit status: 0 done and every check passes; 1 a check failed (the files are left re-laid for a look);
2 not run (not a repository root, uncommitted changes).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

PKG = "l2r_submit"

# module -> folder[/new name]; a module not listed stays at the top (and is printed).
MOVES: dict[str, str] = {
    # 1 core: the tensor contract, every file read and write, datasets and path safety, warping, device
    "contract": "core", "io": "core", "format2020": "core", "folders": "core", "dataset": "core",
    "integrity": "core", "spatial": "core", "runtime": "core",
    "gzip_codec": "core",  # io's .nii.gz streams
    "versions": "core",  # the evaluator versions: io's 2020 reader asks them, so below evaluation
    # 2 evaluation: the official metrics and everything around them
    "metrics": "evaluation", "scoring": "evaluation", "evaluate": "evaluation", "reference": "evaluation",
    "compare": "evaluation", "report": "evaluation",
    # 2 nets: the networks (model.py is split into nets/ by MODEL_SPLIT) and their checkpoints
    "checkpoint": "nets",
    # 3 training
    "losses": "training", "data": "training", "train": "training", "train_logs": "training",
    "trainer": "training", "distributed": "training", "augment": "training", "synthetic": "training",
    "volume_pairs": "training",
    # 3 registration at test time
    "predict": "registration", "pipeline": "registration", "shards": "registration",
    "quick_rerun": "registration", "predict_args": "registration", "pair_plan": "registration",
    "run_record": "registration", "instance": "registration", "features": "registration",
    "search": "registration", "stages": "registration", "qc": "registration",
}

# model.py's top-level names -> nets/ module; a name not listed goes to MODEL_REST.
MODEL_SPLIT: dict[str, tuple[str, ...]] = {
    "config": ("CT_WINDOWS", "ModelConfig", "PRESETS"),
    "blocks": ("ConvNormAct", "Stem", "DownLevel", "UpLevel", "Encoder", "Decoder"),
    "inputs": ("preprocess", "integrate", "to_model_frame", "disp_from_model_frame"),
}
MODEL_REST = "regnet"  # not nets/registration.py: one `registration` (the test-time folder) is enough
MODEL_DOCS = {
    "config": "The network's sizes: ModelConfig, its presets and the CT windows of the inputs.",
    "blocks": "Encoder and decoder blocks of the registration network (shared by the networks built on them).",
    "inputs": "Network inputs and outputs: CT windows, gradient integration, the original weights' frame.",
}

# Layers, lowest first: a module imports only from its own folder or a folder of a lower layer ("" = top).
LAYERS: dict[str, int] = {"core": 1, "evaluation": 2, "nets": 2, "training": 3, "registration": 3, "recipe": 4,
                          "commands": 5, "": 6}
FOLDER_DOCS = {
    "core": "Layer 1: the tensor contract, file I/O, datasets and path safety, warping, device and threads.",
    "evaluation": "Layer 2: the official metrics, scoring, evaluate, reference, compare and the report.",
    "nets": "Layer 2: the networks, their blocks, inputs and checkpoints.",
    "training": "Layer 3: the trainer, training data, augmentation, losses and logs.",
    "registration": "Layer 3: test-time registration: predict, stages, search, instance optimisation, QC.",
    "recipe": "Layer 4: the paper's recipe: external cohorts, pseudo-labels, the plan of its steps.",
    "commands": "Layer 5: command groups of the CLI beyond cli.py's own (each imports lower layers lazily).",
}
# Exact edits a move needs beyond imports: module -> (old text, new text). quick_rerun hashes the package's
# Python files to tell whether the code changed: after the move they lie in sub-folders.
PATCHES: dict[str, tuple[tuple[str, str], ...]] = {
    "quick_rerun": (('sorted(root.glob("*.py"))', 'sorted(root.rglob("*.py"))'),
                    ("h.update(path.name.encode()", "h.update(path.relative_to(root).as_posix().encode()"),
                    ('"""sha256 of this package\'s Python files (names and contents), in name order."""',
                     '"""sha256 of this package\'s Python files (paths in the package and contents), '
                     'in path order."""')),
}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".cfg", ".txt", ".yml", ".yaml", ".ini"}
TEXT_NAMES = {"Dockerfile", ".dockerignore", "run"}
LINE = 120


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def fail(msg: str, code: int = 2) -> None:
    print(f"relayout: {msg}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- names old -> new
def model_names(src: str) -> dict[str, str]:
    """Each top-level name of model.py -> the nets/ module it goes to."""
    home: dict[str, str] = {}
    for node in ast.parse(src).body:
        for name in _defined(node):
            home[name] = next((part for part, names in MODEL_SPLIT.items() if name in names), MODEL_REST)
    return home


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


class Names:
    """Old dotted module names -> new ones, and model.py's names -> their nets/ module."""

    def __init__(self, model_home: dict[str, str]) -> None:
        self.model_home = model_home
        self.modules = {f"{PKG}.{old}": f"{PKG}.{dest.replace('/', '.')}" if "/" in dest else f"{PKG}.{dest}.{old}"
                        for old, dest in MOVES.items()}
        if model_home:
            self.modules[f"{PKG}.model"] = f"{PKG}.nets.{MODEL_REST}"

    def module(self, old: str) -> str:
        return self.modules.get(old, old)

    def model_part(self, name: str) -> str:
        return f"{PKG}.nets.{self.model_home.get(name, MODEL_REST)}"


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


# ---------------------------------------------------------------- step 3: imports
def _abs_from(pkg_of_file: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names, resolved from the file's (old) package."""
    if node.level == 0:
        return node.module or ""
    base = pkg_of_file.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _rel(target: str, pkg_of_file: str, relative: bool) -> str:
    """``target`` written from ``pkg_of_file``: relative (``..core.io``) inside the package, else absolute."""
    if not relative:
        return target
    here, there = pkg_of_file.split("."), target.split(".")
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    return "." * (len(here) - common + 1) + ".".join(there[common:])


def _fmt(module: str, aliases: list[str]) -> str:
    one = f"from {module} import {', '.join(aliases)}"
    if len(one) <= LINE:
        return one
    rows, row = [], f"from {module} import ("
    indent = " " * len(row)
    for i, a in enumerate(aliases):
        piece = a + ("," if i < len(aliases) - 1 else ")")
        if len(row) + len(piece) + 1 > LINE:
            rows.append(row.rstrip())
            row = indent
        row += piece + " "
    rows.append(row.rstrip())
    return "\n".join(rows)


def _alias(name: str, asname: str | None) -> str:
    return f"{name} as {asname}" if asname and asname != name else name


class Rewriter:
    """Rewrites the imports of one Python source, its old ``model.NAME`` uses and dotted strings."""

    def __init__(self, names: Names, old_pkg: str, new_pkg: str, relative: bool) -> None:
        self.names, self.old_pkg, self.new_pkg, self.relative = names, old_pkg, new_pkg, relative
        self.model_aliases: dict[str, str] = {}  # model part -> the name it is bound to in this file

    def statement(self, node: ast.ImportFrom | ast.Import) -> str | None:
        """The new text of an import statement, or None when it stays."""
        if isinstance(node, ast.Import):
            new = [_alias(self.names.module(a.name), a.asname) for a in node.names]
            old = [_alias(a.name, a.asname) for a in node.names]
            return None if new == old else f"import {', '.join(new)}"
        mod = _abs_from(self.old_pkg, node)
        if mod != PKG and not mod.startswith(PKG + "."):
            return None
        groups: dict[str, list[str]] = {}
        if mod == PKG:  # from . import a, b
            for a in node.names:
                full = f"{PKG}.{a.name}"
                if full == f"{PKG}.model" and self.names.model_home:
                    for part in sorted(self.model_aliases):
                        bound = self.model_aliases[part]
                        groups.setdefault(f"{PKG}.nets", []).append(_alias(part, bound))
                    continue
                new = self.names.module(full)
                parent, leaf = new.rsplit(".", 1)
                groups.setdefault(parent, []).append(_alias(leaf, a.asname or (a.name if leaf != a.name else None)))
        elif mod == f"{PKG}.model" and self.names.model_home:
            for a in node.names:
                groups.setdefault(self.names.model_part(a.name), []).append(_alias(a.name, a.asname))
        else:
            new = self.names.module(mod)
            groups[new] = [_alias(a.name, a.asname) for a in node.names]
        out = [_fmt(_rel(m, self.new_pkg, self.relative and node.level > 0), al) for m, al in groups.items()]
        text = "\n".join(out)
        same = (len(groups) == 1 and node.level > 0 and self.old_pkg == self.new_pkg
                and _abs_from(self.new_pkg, node) == next(iter(groups)))
        return None if same else text


def _bindings(tree: ast.AST) -> set[str]:
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(n.name)
        elif isinstance(n, ast.alias):
            names.add((n.asname or n.name).split(".")[0])
    return names


def rewrite_python(path: Path, src: str, names: Names, old_pkg: str, new_pkg: str, in_package: bool) -> str:
    tree = ast.parse(src)
    rw = Rewriter(names, old_pkg, new_pkg, in_package)
    edits: list[tuple[int, int, int, int, str]] = []  # (line, col, end line, end col, text), 1-based lines
    imports_model = any(
        isinstance(n, ast.ImportFrom) and _abs_from(old_pkg, n) == PKG
        and any(a.name == "model" and not a.asname for a in n.names)
        for n in ast.walk(tree)) and bool(names.model_home)
    if imports_model:
        taken = _bindings(tree)
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "model"
                    and n.attr in names.model_home):
                part = names.model_home[n.attr]
                bound = rw.model_aliases.setdefault(part, part if part not in taken else f"nets_{part}")
                edits.append((n.lineno, n.col_offset, n.value.end_lineno, n.value.end_col_offset, bound))
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            text = rw.statement(n)
            if text is None or text == ast.get_source_segment(src, n):
                continue
            lines = src.splitlines()
            segment = "\n".join(lines[n.lineno - 1: n.end_lineno])
            comments = re.findall(r"#.*", segment)
            indent = " " * n.col_offset
            text = text.replace("\n", "\n" + indent)
            if comments and n.end_lineno != n.lineno:
                first, *rest = text.split("\n")
                text = "\n".join([f"{first}  {comments[0]}", *rest])
            edits.append((n.lineno, n.col_offset, n.end_lineno, n.end_col_offset, text))
    out = _apply(src, edits)
    if in_package and old_pkg != new_pkg:
        depth = new_pkg.count(".") - old_pkg.count(".")
        out = out.replace("Path(__file__).resolve().parent ", f"Path(__file__).resolve().parents[{depth}] ")
        out = out.replace("Path(__file__).resolve().parent\n", f"Path(__file__).resolve().parents[{depth}]\n")
    if in_package:
        out = _sort_relative(out)
    return rewrite_text(out, names)


def _sort_relative(src: str) -> str:
    """Each run of one-line module-level relative imports in order: ``..x`` before ``.x``, then by name."""
    lines = src.split("\n")
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and re.match(r"from \.+[\w.]* import [^(]*$", lines[j]) and "#" not in lines[j]:
            j += 1
        if j - i > 1:
            lines[i:j] = sorted(lines[i:j], key=lambda ln: (-len(re.match(r"from (\.+)", ln).group(1)), ln))
        i = max(j, i + 1)
    return "\n".join(lines)


def _apply(src: str, edits: list[tuple[int, int, int, int, str]]) -> str:
    lines = src.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    spans = sorted({(starts[a - 1] + b, starts[c - 1] + d, t) for a, b, c, d, t in edits}, reverse=True)
    for lo, hi, text in spans:
        src = src[:lo] + text + src[hi:]
    return src


def rewrite_text(text: str, names: Names) -> str:
    """Dotted ``l2r_submit.x[.NAME]`` names, ``l2r_submit/x.py`` paths and one-line ``from l2r_submit
    import`` statements in any text (shell heredocs, docs, mock targets)."""
    def dotted(m: re.Match) -> str:
        old, rest = f"{PKG}.{m.group(1)}", m.group(2) or ""
        if old == f"{PKG}.model" and names.model_home:
            attr = rest[1:].split(".")[0] if rest else ""
            return (names.model_part(attr) if attr else f"{PKG}.nets") + rest
        return names.module(old) + rest

    mods = "|".join(sorted((k.split(".", 1)[1] for k in names.modules), key=len, reverse=True))
    if not mods:
        return text

    def from_line(m: re.Match) -> str:
        try:
            node = ast.parse(m.group(2)).body[0]
        except SyntaxError:
            return m.group(0)
        new = Rewriter(names, PKG, PKG, False).statement(node)
        return m.group(0) if new is None else m.group(1) + new.replace("\n", "\n" + m.group(1))

    text = re.sub(rf"^([ \t]*)(from {PKG} import [\w ,]+)$", from_line, text, flags=re.M)
    text = re.sub(rf"\b{PKG}\.({mods})\b((?:\.\w+)*)", dotted, text)

    def path(m: re.Match) -> str:
        old = names.module(f"{PKG}.{m.group(1)}")
        if m.group(1) == "model" and names.model_home:
            return f"{PKG}/nets/"
        return old.replace(".", "/") + ".py"

    return re.sub(rf"\b{PKG}/({mods})\.py\b", path, text)


def readme_layout(text: str, names: Names) -> str:
    """README's layout table: model.py's row becomes the nets/ modules' rows; a layer paragraph once."""
    row = re.search(rf"^\| `{PKG}/nets/` \|.*$", text, flags=re.M)
    if row:
        jobs = {**MODEL_DOCS, MODEL_REST: "the registration network (RegistrationNet, build, register)"}
        rows = [f"| `{PKG}/nets/{p}.py` | {jobs[p][0].lower() + jobs[p][1:].rstrip('.')} |" for p in
                [*MODEL_SPLIT, MODEL_REST]]
        text = text[:row.start()] + "\n".join(rows) + text[row.end():]
    if "## Layout" in text and "Imports point down the layers" not in text:
        para = ("\nImports point down the layers: a module imports only from its own folder or a lower layer\n"
                "(`tests/test_layout.py` checks it; `.venv/bin/python scripts/relayout.py --check` prints any "
                "violation).\n\n"
                "| layer | folder |\n|---|---|\n"
                + "\n".join(f"| {n} | `{PKG}/{f}/` |" if f else f"| {n} | `{PKG}/cli.py`, `container.py`, "
                            "`__main__.py` |" for f, n in sorted(LAYERS.items(), key=lambda kv: kv[1])) + "\n")
        text = text.replace("## Layout\n", "## Layout\n" + para, 1)
    table = re.search(r"^\| module \| job \|\n\|---\|---\|\n((?:\|.*\n)+)", text, flags=re.M)
    if table:  # rows in layer order, the top-level modules last
        rows = table.group(1).splitlines(keepends=True)

        def layer(row: str) -> int:
            m = re.match(rf"\| `{PKG}/(\w+)/", row)
            return LAYERS.get(m.group(1), 4) if m else 4
        rows = sorted(rows, key=lambda r: (layer(r), [f for f in LAYERS].index(
            (re.match(rf"\| `{PKG}/(\w+)/", r) or [None, ""])[1]) if layer(r) < 4 else 99))
        text = text[:table.start(1)] + "".join(rows) + text[table.end(1):]
    return text


def model_mentions(text: str, names: Names) -> str:
    """Docs' ``model.NAME`` (the old module) -> ``<nets module>.NAME``."""
    if not names.model_home:
        return text
    return re.sub(r"`model\.(\w+)", lambda m: f"`{names.model_home[m.group(1)]}.{m.group(1)}"
                  if m.group(1) in names.model_home else m.group(0), text)


def rewrite_all(root: Path, names: Names, moved: dict[Path, Path]) -> list[Path]:
    changed = []
    files = [root / f for f in sh("git", "ls-files").splitlines()]
    files += [p for p in moved if p not in files]
    for path in sorted(set(files)):
        if not path.is_file() or not (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
            continue
        if path.resolve() == Path(__file__).resolve():
            continue
        try:
            src = path.read_text()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(root)
        if path.suffix == ".py":
            in_package = rel.parts[0] == PKG
            new_pkg = ".".join(rel.parent.parts) if in_package else PKG
            old = moved.get(path, path).relative_to(root)
            old_pkg = ".".join(old.parent.parts) if in_package else PKG
            try:
                out = rewrite_python(path, src, names, old_pkg, new_pkg, in_package)
            except SyntaxError as exc:
                print(f"relayout: {rel}: not parsed ({exc.msg}, line {exc.lineno}); only its text rewritten")
                out = rewrite_text(src, names)
        else:
            out = rewrite_text(src, names)
            if path.suffix == ".md":
                out = model_mentions(out, names)
            if path.name == "README.md" and path.parent == root:
                out = readme_layout(out, names)
        if path.suffix == ".py" and rel.parts[0] == PKG:
            for old_text, new_text in PATCHES.get(path.stem, ()):
                if old_text in out:
                    out = out.replace(old_text, new_text)
                elif new_text not in out:
                    print(f"relayout: manual step: {rel}: expected text not found: {old_text}")
        if out != src:
            path.write_text(out)
            changed.append(rel)
    return changed


# ---------------------------------------------------------------- step 4: checks
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
    leftovers = [f"{f}:{i}" for f in sh("git", "ls-files").splitlines() if Path(f).suffix in (".md", ".py")
                 and f != "scripts/relayout.py" and (root / f).is_file()
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
