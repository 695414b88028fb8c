"""What ``scripts/relayout.py`` does to the flat package: which module goes to which folder, how ``model.py``
is split, the folders' and new modules' docstrings, the text edits a move needs, and the map of old names
to new ones (:class:`Names`). Tables and names only; the steps are in ``relayout.py`` and
``relayout_rewrite.py``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_check import PKG  # noqa: E402

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
