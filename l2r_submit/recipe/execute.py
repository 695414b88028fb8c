"""Running the recipe's plan in this process: steps in order, done ones skipped, markers written.

Started by ``torchrun``, every process runs this: the recipe joins the process group once (with a long
timeout, since a rank may wait hours for another's step) and keeps it for every step. Training steps run
on every rank (they are distributed data parallel already and reuse the group); the other steps run on
rank 0 alone, with the launch variables hidden from them (they see a single process), while the other
ranks wait for rank 0's outcome. Rank 0 decides what is done, writes markers and the log.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from ..core import runtime
from ..training import distributed
from . import markers, plan

WAIT = datetime.timedelta(days=7)
"""How long a rank may wait in one collective (another rank's preparation of a cohort takes hours)."""

Invoke = Callable[[tuple[str, ...]], int]
"""``argv -> exit code``: runs ``l2r ARGV`` in this process (the click group's commands)."""


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Hide ``torchrun``'s launch variables, so that a step rank 0 runs alone sees a single process."""
    saved = {k: os.environ.pop(k) for k in distributed.LAUNCH_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def failure_advice(step: plan.Step, code: int, seconds: float) -> str:
    """What the recipe says when ``step`` ended with exit ``code``: the recipe command is what to run again (the
    step's own stop line names the step's ``l2r`` command, which the recipe runs for the user)."""
    if code in (130, 143):  # Ctrl-C, SIGTERM: the step's own line said what it kept
        resumes = " (this step goes on from its last finished epoch)" if step.can_resume() else ""
        return (f"stopped after {seconds:.1f} s (exit {code}); finished steps are kept: run the same recipe "
                f"command again to continue{resumes}")
    earlier = (f"; if it failed on a file that an earlier step wrote, add --redo naming that step (it reads "
               f"{', '.join(step.needs)})") if step.needs else ""
    return (f"failed (exit {code}) after {seconds:.1f} s; finished steps are kept: run the same recipe command "
            f"again to continue{earlier}")


def move_aside(paths: tuple[Path, ...]) -> list[Path]:
    """Rename each existing path to ``<name>.replaced-<UTC time>`` (``--redo`` never deletes work)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for path in paths:
        if path.exists():
            target = path.with_name(f"{path.name}.replaced-{stamp}")
            path.rename(target)
            moved.append(target)
    return moved


def best_row(run_dir: Path) -> dict | None:
    """The logged epoch with the best validation Dice of a training run (None without one)."""
    rows = []
    with contextlib.suppress(OSError, ValueError):
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    scored = [r for r in rows if isinstance(r.get("DSC"), (int, float))]
    return max(scored, key=lambda r: r["DSC"]) if scored else None


class Log:
    """Lines to the terminal (``say``) and, on rank 0, appended to ``OUT/recipe.log`` with the UTC time."""

    def __init__(self, path: Path, say: Callable[[str], None], main: bool) -> None:
        self.path, self.say, self.main = path, say, main

    def __call__(self, line: str) -> None:
        if not self.main:
            return
        self.say(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")


def run(steps: list[plan.Step], out: Path, invoke: Invoke, say: Callable[[str], None], device: str = "auto",
        redo: frozenset[str] = frozenset()) -> int:
    """Run ``steps`` (skipping those done); returns the exit code: 0 all done, else the failed step's code
    (1 when it gave none). Finished steps keep their markers, so a rerun continues where this one stopped.

    Raises:
        ValueError: before any step runs, one line: a step done with another command or from other
            inputs (``--redo`` it), an unreadable marker, an inconsistent launch environment.
    """
    dist, _ = distributed.start(runtime.resolve_device(device), timeout=WAIT)
    try:
        return _run(steps, out, invoke, say, redo, dist)
    finally:
        distributed.stop(dist)


def _run(steps: list[plan.Step], out: Path, invoke: Invoke, say: Callable[[str], None], redo: frozenset[str],
         dist: distributed.Dist) -> int:
    log = Log(out / "recipe.log", say, dist.is_main)
    found: dict | str = {}
    if dist.is_main:
        try:
            found = markers.statuses(steps, out, redo)
        except ValueError as exc:
            found = str(exc)
    found = dist.gather(found)[0]  # rank 0's view, on every rank
    if isinstance(found, str):
        raise ValueError(found)
    changed = [f"{n} ({s.why})" for n, s in found.items() if s.state == "changed"]
    if changed:
        raise ValueError(f"{out}: steps done before cannot be kept: {'; '.join(changed)}; give --redo STEP to run it "
                         "again (its outputs are moved aside, and the steps that read from it run again too)")
    log(f"recipe: {len(steps)} steps, world size {dist.world_size}")
    for n, step in enumerate(steps, 1):
        status = found[step.name]
        if status.state == "done":
            log(f"[{n}/{len(steps)}] {step.name}: done, skipped")
            continue
        if dist.is_main and status.why == "redo":
            markers.marker_path(out, step.name).unlink(missing_ok=True)
            for path in move_aside(step.written()):
                log(f"[{n}/{len(steps)}] {step.name}: earlier outputs moved to {path}")
        command = step.command(status.state == "resume")
        log(f"[{n}/{len(steps)}] {step.name}: {'resuming' if status.state == 'resume' else 'running'} "
            f"l2r {' '.join(command)}")
        t0 = time.perf_counter()
        if step.all_ranks:
            code = invoke(command)
            codes = dist.gather(code)
            code = next((c for c in codes if c), 0)
        else:
            code = 0
            if dist.is_main:
                with single_process():
                    code = invoke(command)
            code = dist.gather(code)[0]
        seconds = time.perf_counter() - t0
        if code == 0 and dist.is_main:
            missing = [str(p) for p in step.outputs if not p.exists()]
            if missing:
                log(f"[{n}/{len(steps)}] {step.name}: error: it ended without writing {', '.join(missing)}")
                code = 1
            else:
                markers.write_marker(out, step, command, seconds, markers.input_stamps(step, out))
        code = dist.gather(code)[0]
        if code:
            log(f"[{n}/{len(steps)}] {step.name}: {failure_advice(step, code, seconds)}")
            return code
        log(f"[{n}/{len(steps)}] {step.name}: done in {seconds:.1f} s")
    for step in steps:
        best = best_row(step.run_dir) if step.run_dir is not None and step.name != "segment-train" else None
        if best is not None:
            log(f"{step.name}: best val DSC {best['DSC']:.4f} at epoch {best.get('epoch')}")
    log("recipe: every step done")
    return 0

