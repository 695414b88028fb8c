"""The container's entrypoint: ``l2r predict`` with the organisers' mounts as defaults.

    docker run [--gpus all] -v DATA:/l2r/data:ro -v OUT:/l2r/output IMAGE [DATASET_JSON] [l2r predict options]

Without DATASET_JSON, the dataset JSON is looked for in /l2r/data (``*_dataset.json`` first, then the
only ``*.json``); a relative DATASET_JSON that is not found from the working folder is taken from /l2r/data;
without ``--out`` (or ``--out=DIR``), fields go to /l2r/output, which must then be a mounted folder (else
the fields would be lost with the container: refused); a relative ``--out`` or ``--qc`` folder is taken
inside /l2r/output (not in the image's working folder), and must then be on that mount too. Paths are the
container's, not the host's. Every
other option is passed to ``l2r predict`` unchanged (``--format``, ``--names``, ``--split``, ``--io-iters``,
``--evaluate``, ...). Add ``--user "$(id -u):$(id -g)"`` so that the fields belong to you (the default user
is uid 10001). Without a GPU, or without the NVIDIA container runtime, leave ``--gpus all`` out.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable

DATA_DIR = Path("/l2r/data")
OUTPUT_DIR = Path("/l2r/output")

USAGE = __doc__ or ""
OUTPUT_OPTIONS = ("--out", "--qc")


def find_dataset_json(data_dir: Path) -> Path:
    """The dataset JSON of a data folder.

    Raises:
        ValueError: none, or several candidates (name the one to use).
    """
    candidates = sorted(data_dir.glob("*_dataset.json")) or sorted(data_dir.glob("*.json"))
    if not candidates:
        raise ValueError(f"{data_dir}: no dataset JSON found; mount the data folder there or pass the JSON path")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ValueError(f"{data_dir}: several JSON files ({names}); pass the one to use as the first argument")
    return candidates[0]


def is_mounted(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether ``path`` lies on a mounted volume (``docker run -v HOST:PATH``, or a volume on a folder
    above it) rather than on the container's own root file system, which goes with the container. From
    the kernel's mount table (field 5 of each line, a space written as ``\\040``); ``os.path.ismount`` of
    the path itself where there is no table."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return os.path.ismount(path)

    def unescape(field: str) -> str:  # the kernel writes space, tab, newline and backslash as \ooo
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

    points = {Path(unescape(line.split()[4])) for line in lines if len(line.split()) > 4}
    below = [p for p in points if p == path or p in path.parents]
    return max(below, key=lambda p: len(p.parts), default=Path("/")) != Path("/")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a folder on the way that this user may not enter
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc}) by uid {os.getuid()}; make the data "
                         "readable to the --user the container runs as") from None


def _relative_outputs_inside(args: list[str], output_dir: Path) -> tuple[list[str], list[str]]:
    """``args`` with a relative ``--out``/``--qc`` folder (``--qc DIR`` or ``--qc=DIR``) taken inside
    ``output_dir`` (the image's working folder is neither mounted nor writable); and the options whose
    last value (the one click uses) was so taken.

    Raises:
        ValueError: an empty value (click would take it as the working folder), or a relative one that
            leaves ``output_dir`` ('..').
    """
    out: list[str] = []
    last: dict[str, bool] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        option = next((o for o in OUTPUT_OPTIONS if arg == o or arg.startswith(o + "=")), None)
        separate = option is not None and arg == option and i + 1 < len(args)
        if option is None or (arg == option and not separate):  # a missing value: click says so
            out.append(arg)
            i += 1
            continue
        value = args[i + 1] if separate else arg[len(option) + 1:]
        if not value:
            raise ValueError(f"{option}: an empty folder name; name a folder under {output_dir}")
        relative = not Path(value).is_absolute()
        if relative:
            inside = Path(os.path.normpath(output_dir / value))
            if not inside.is_relative_to(output_dir):
                raise ValueError(f"{option} {value}: a relative folder is taken inside {output_dir}, and this one "
                                 "leaves it; give an absolute path, or one inside the output mount")
            out += [option, str(inside)]
        else:
            out += args[i:i + 2] if separate else [arg]
        last[option] = relative
        i += 2 if separate else 1
    return out, [o for o in OUTPUT_OPTIONS if last.get(o)]


def build_argv(args: list[str], data_dir: Path = DATA_DIR, output_dir: Path = OUTPUT_DIR,
               mounted: Callable[[Path], bool] | None = None) -> list[str]:
    """The ``l2r predict`` argument list for the container's arguments. ``mounted(output_dir)`` is asked
    when the fields go to the default folder or a relative --out/--qc is taken inside it (None: not checked,
    for tests).

    Raises:
        ValueError: no dataset JSON found, a data folder this user cannot read, or the default output
            folder is not a mounted one (the fields would vanish with the container) or not writable.
    """
    positional = args[0] if args and not args[0].startswith("-") else None
    rest = args[1:] if positional else list(args)
    if _exists(data_dir) and not os.access(data_dir, os.R_OK | os.X_OK):
        raise ValueError(f"{data_dir}: cannot be read by uid {os.getuid()} (permission denied); make the data "
                         "readable to the --user the container runs as")
    dataset_json = Path(positional) if positional else find_dataset_json(data_dir)
    if not dataset_json.is_absolute() and not _exists(dataset_json) and _exists(data_dir / dataset_json):
        dataset_json = data_dir / dataset_json  # `docker run ... IMAGE AbdomenCTCT_dataset.json`
    elif not _exists(dataset_json):
        inside = "" if dataset_json.is_absolute() else f" (nor in {data_dir})"
        raise ValueError(f"{dataset_json}: not found in the container{inside}; paths are the container's: "
                         f"mount the data folder (-v HOST_DIR:{data_dir}:ro) and name the JSON inside it")
    rest, inside = _relative_outputs_inside(rest, output_dir)
    default_out = not any(a == "--out" or a.startswith("--out=") for a in rest)
    if (default_out or inside) and mounted is not None and not mounted(output_dir):
        what = "the fields" if default_out or "--out" in inside else "the QC pictures"
        raise ValueError(f"{output_dir}: no folder is mounted there, so {what} would be lost with the "
                         f"container; add -v HOST_DIR:{output_dir} (or --out to a mounted folder)")
    if default_out:  # a second --out would win over the user's
        if mounted is not None and not os.access(output_dir, os.W_OK | os.X_OK):
            raise ValueError(f"{output_dir}: not writable by uid {os.getuid()} (permission denied); run with "
                             "--user \"$(id -u):$(id -g)\" as the owner of the mounted folder, or make it writable")
        rest = [*rest, "--out", str(output_dir)]
    return ["predict", str(dataset_json), *rest]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    from .cli import main as l2r
    from .commands.common import stop_signals

    if "-h" in args or "--help" in args:  # wherever it is: help needs no data mount
        print(USAGE.strip() + f"\n\nOptions of l2r predict (here --out is optional: it defaults to {OUTPUT_DIR}, "
              "whatever the list below says):\n")
        l2r(["predict", "--help"], prog_name="l2r")
        return
    try:
        l2r_args = build_argv(args, DATA_DIR, OUTPUT_DIR, mounted=is_mounted)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    with stop_signals():  # python is the container's first process: without a handler SIGTERM is ignored
        l2r(l2r_args, prog_name="l2r")  # predict says what it kept; earlier, click's "Aborted!" (exit 1)


if __name__ == "__main__":  # pragma: no cover
    main()
