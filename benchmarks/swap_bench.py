"""Which stage makes the difference against ConvexAdam: its search and ours, each with and without a refinement.

On the val pairs of test_data/, five fields per pair, all scored by our evaluator:
  ConvexAdam             its defaults (as benchmarks/peer_bench.py runs it);
  ConvexAdam search      the same with ``lambda_weight=0``: its coupled convex search and inverse consistency,
                         no Adam stage;
  our search             our search stage alone (search.SearchConfig defaults);
  ours                   our default stages, search then refinement;
  CA search + our adam   our refinement (the default's settings after the search) started from ConvexAdam's
                         search field.
Comparing "ConvexAdam" with "CA search + our adam" compares the two refinements from the same start; "our
search" with "ConvexAdam search", the two searches. ConvexAdam runs in .venv-peer (benchmarks/setup_peer.sh),
each of its runs in one process; ours in this process. Seconds are not compared here (peer_bench.py does).

    bash benchmarks/setup_peer.sh            # once
    .venv/bin/python benchmarks/swap_bench.py [--threads 2] [--pairs 0004_0006,0006_0004] [--keep DIR] [--json OUT]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from peer_bench import bench_pairs, run_convexadam, score  # noqa: E402

METHODS = ("ConvexAdam", "ConvexAdam search", "our search", "ours", "CA search + our adam")


def run_ours(ds, pairs, work: Path, ca_search: Path) -> None:
    """Our search alone, our default stages, and our refinement from ConvexAdam's search field, one pair at a
    time; each field written to its method's folder under ``work``."""
    import torch

    from l2r_submit.core import disp_files, io
    from l2r_submit.registration import predict, stages
    from l2r_submit.registration.search import SearchConfig

    both = stages.build(("search", "adam"), None, SearchConfig(), predict.default_io(None, after_search=True))
    for pair in pairs:
        moving, fixed = (torch.from_numpy(io.read_volume(v.image, np.float32).array)[None, None]
                         for v in (pair.moving, pair.fixed))
        stem = disp_files.disp_names(pair.fixed.id, pair.moving.id, "long")[0]
        start = torch.from_numpy(disp_files.read_disp(ca_search / f"{stem}.nii.gz", ds.shape))[None]
        fields = {"our search": stages.run(both[:1], moving, fixed)[0],
                  "ours": stages.run(both, moving, fixed)[0],
                  "CA search + our adam": stages.run(both[1:], moving, fixed, start)[0]}
        for name, disp in fields.items():
            disp_files.write_disp(disp[0].numpy().astype(np.float32), work / folder(name), pair.fixed.id,
                                  pair.moving.id)
        print(f"ours {pair.key}: done", file=sys.stderr, flush=True)


def folder(name: str) -> str:
    return name.lower().replace(" + ", "_").replace(" ", "_")


@click.command()
@click.option("--threads", default=2, show_default=True)
@click.option("--pairs", default=None, help="Comma list FFFF_MMMM of val pairs [default: all].")
@click.option("--peer-python", type=click.Path(path_type=Path), default=ROOT / ".venv-peer" / "bin" / "python",
              show_default=True, help="Python of the environment made by benchmarks/setup_peer.sh.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the fields in this folder (default: a temporary one); ConvexAdam runs already "
                   "recorded there for the same pairs and settings are reused (peer_bench.py --keep DIR "
                   "writes the same 'convexadam' folder).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
def main(threads: int, pairs: str | None, peer_python: Path, keep: Path | None, json_out: Path | None) -> None:
    import torch

    torch.set_num_threads(threads)
    ds, chosen, truth = bench_pairs(pairs, peer_python)
    keys = [p.key for p in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        work = keep if keep is not None else Path(tmp)
        run_convexadam(peer_python, keys, work / "convexadam", threads)
        run_convexadam(peer_python, keys, work / "convexadam_search", threads, {"lambda_weight": 0})
        run_ours(ds, chosen, work, work / "convexadam_search")
        results = {name: score(ds, work / folder(name), truth) for name in METHODS}
    report(results, keys, truth, threads)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


def report(results: dict, keys: list[str], truth: dict, threads: int) -> None:
    """Per-pair Dice of every method, their means, and the EPE in the body on the synthetic pairs."""
    print(f"CPU, {threads} threads, {len(keys)} val pairs of test_data/; Dice over labels 1-13 (our evaluator)")
    width = max(len(m) for m in METHODS)
    first = results[METHODS[0]]
    print(f"{'pair':>22} {'zero':>6} " + " ".join(f"{m:>{width}}" for m in METHODS))
    for k in keys:
        print(f"{k:>22} {first[k]['DSC_zero_field']:>6.3f} "
              + " ".join(f"{results[m][k]['DSC']:>{width}.3f}" for m in METHODS))
    print(f"{'mean Dice':>22} {np.mean([first[k]['DSC_zero_field'] for k in keys]):>6.3f} "
          + " ".join(f"{np.mean([results[m][k]['DSC'] for k in keys]):>{width}.3f}" for m in METHODS))
    print(f"{'worst J<=0':>22} {'':>6} "
          + " ".join(f"{max(results[m][k]['jac_nonpos_fraction'] for k in keys):>{width}.1e}" for m in METHODS))
    if truth:
        print(f"{'EPE body (synthetic)':>22} {np.mean([first[k]['EPE_body_zero_field'] for k in truth]):>6.3f} "
              + " ".join(f"{np.mean([results[m][k]['EPE_body'] for k in truth]):>{width}.3f}" for m in METHODS))


if __name__ == "__main__":
    main()
