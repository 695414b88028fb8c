"""Done-markers of the recipe's steps, and what each step's state is: done, to run, to resume, or changed.

A step is done when its marker ``OUT/steps/<step>.done.json`` exists (written atomically after the step's
outputs), records the same command (less the options that do not change results: :data:`NO_EFFECT`) and
the same finish times of the steps it reads from, and its main output (the first listed) still exists
while it is needed: the step is the last of its chain, or a step that reads from it is still to run. An
intermediate output deleted once every reader is done (pseudo-labels, to save space) changes nothing.
Nothing here imports torch or numpy.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from .plan import Step

NO_EFFECT = {"--quiet": 0, "--resume": 0, "--threads": 1, "--device": 1, "--workers": 1}
"""Options (and how many values follow them) left out when a step's command is compared with its marker."""



def marker_path(out: Path, name: str) -> Path:
    return out / "steps" / f"{name}.done.json"


def effective(argv: tuple[str, ...] | list[str]) -> list[str]:
    """``argv`` less the options that do not change a step's results (:data:`NO_EFFECT`)."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
        elif arg in NO_EFFECT:
            skip = NO_EFFECT[arg]
        else:
            kept.append(arg)
    return kept


def read_marker(path: Path) -> dict | None:
    """A done-marker, or None when absent. Raises ValueError (one line) for an unreadable one."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable done-marker ({type(exc).__name__}); delete it to redo the step") from None
    if not isinstance(data, dict) or not isinstance(data.get("command"), list):
        raise ValueError(f"{path}: not a done-marker of l2r recipe; delete it to redo the step")
    return data


def write_marker(out: Path, step: Step, command: tuple[str, ...], seconds: float,
                 inputs: dict[str, str | None]) -> Path:
    """Write ``step``'s marker atomically (:func:`l2r_submit.core.io.atomic_write`); returns its path."""
    from ..core import io

    record = {"step": step.name, "command": list(step.argv), "ran": ["l2r", *command],
              "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "finished_ns": time.time_ns(), "inputs": inputs, "outputs": [str(p) for p in step.outputs]}
    text = json.dumps(record, indent=2) + "\n"
    return io.atomic_write(marker_path(out, step.name), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@dataclass(frozen=True)
class Status:
    """Where a step stands. ``state``: ``done``, ``run``, ``resume`` or ``changed`` (done with another
    command, from other inputs, or its outputs deleted since: refused without ``--redo``); ``why`` says why
    (``redo`` for a step asked to run again)."""

    state: str
    why: str = ""


def redo_closure(steps: list[Step], redo: set[str] | frozenset[str]) -> set[str]:
    """The steps to run again for ``--redo``: those named, and every later step that reads from one."""
    again = set(redo)
    for step in steps:
        if any(n in again for n in step.needs):
            again.add(step.name)
    return again


def statuses(steps: list[Step], out: Path, redo: set[str] | frozenset[str] = frozenset()) -> dict[str, Status]:
    """Each step's status from the markers in ``out``; ``redo``: steps asked to run again (see
    :func:`redo_closure`).

    Raises:
        ValueError: an unreadable marker.
    """
    again = redo_closure(steps, redo)
    result: dict[str, Status] = {}
    stamps: dict[str, str | None] = {}
    for step in steps:
        stamps[step.name] = None
        if step.name in again:
            result[step.name] = Status("run", "redo")
            continue
        marker = read_marker(marker_path(out, step.name))
        if marker is None:
            result[step.name] = Status("resume" if step.can_resume() else "run")
            continue
        stamps[step.name] = str(marker.get("finished_ns"))
        pending = [n for n in step.needs if result.get(n, Status("done")).state != "done"]
        recorded = marker.get("inputs", {})
        if effective(marker["command"]) != effective(step.argv):
            was = shlex.join(["l2r", *marker["command"]])
            result[step.name] = Status("changed", f"its command changed; it was {was}")
        elif pending:
            result[step.name] = Status("changed", f"it reads from {', '.join(pending)}, which will run first")
        elif any(recorded.get(n) != stamps.get(n) for n in step.needs):
            result[step.name] = Status("changed", "it was made from earlier outputs of " + ", ".join(
                n for n in step.needs if recorded.get(n) != stamps.get(n)))
        else:
            result[step.name] = Status("done")
    for step in steps:  # a main output (best.pt, the merged JSON, ...) deleted since, while it is still needed
        later = [s.name for s in steps if step.name in s.needs]
        needed = not later or any(result[n].state != "done" for n in later)  # a final product, or still to be read
        if result[step.name].state == "done" and step.outputs and not step.outputs[0].exists() and needed:
            result[step.name] = Status("changed", f"it was done, but its output {step.outputs[0]} is gone")
    return result


def input_stamps(step: Step, out: Path) -> dict[str, str | None]:
    """The finish stamps of the markers of the steps ``step`` reads from (recorded in its own marker)."""
    stamps: dict[str, str | None] = {}
    for name in step.needs:
        marker = read_marker(marker_path(out, name))
        stamps[name] = None if marker is None else str(marker.get("finished_ns"))
    return stamps


def epochs_done(step: Step) -> int:
    """Epochs a stopped or finished run of ``step`` has logged (``log.jsonl`` rows; 0 without one)."""
    if step.run_dir is None:
        return 0
    log = step.run_dir / "log.jsonl"
    try:
        return sum(1 for line in log.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError:
        return 0


def describe(steps: list[Step], status: dict[str, Status]) -> list[str]:
    """The plan as ``--dry-run`` prints it: per step its state, the epochs it trains and the exact command."""
    lines = []
    for n, step in enumerate(steps, 1):
        st = status[step.name]
        where = {"done": "done (skipped)", "run": "to run", "resume": "to resume",
                 "changed": "CHANGED: refused without --redo " + step.name}[st.state]
        if st.why and st.state != "changed":
            where += f" ({st.why})"
        epochs = ""
        if step.epochs is not None:
            done = epochs_done(step) if st.state == "resume" else 0
            epochs = f", {step.epochs} epochs" + (f" ({done} done)" if done else "")
        lines.append(f"[{n}/{len(steps)}] {step.name}: {where}{epochs}. {step.about}")
        if st.state == "changed":
            lines.append(f"    {st.why}")
        lines.append("    " + shlex.join(["l2r", *step.command(st.state == "resume")]))
    return lines
