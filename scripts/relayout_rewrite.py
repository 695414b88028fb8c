"""Step 3 of ``scripts/relayout.py``: rewrite every import of the package (relative, absolute, lazy ones
inside functions), the ``model.NAME`` uses of the old ``model`` module, dotted ``l2r_submit.x`` strings and
``l2r_submit/x.py`` paths in code, tests, scripts, benchmarks, .ci, Dockerfile, pyproject and docs, and the
README's layout table.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_check import LAYERS, LINE, PKG, _abs_from, sh  # noqa: E402
from relayout_plan import MODEL_DOCS, MODEL_REST, MODEL_SPLIT, PATCHES, TEXT_NAMES, TEXT_SUFFIXES, Names  # noqa: E402

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
