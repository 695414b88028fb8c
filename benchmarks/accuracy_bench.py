"""Accuracy and speed of `l2r predict` on test_data/ for several stage settings.

For each setting (every combination of `--stages`, `--search-hw`, `--search-grid`, `--search-prior`,
`--search-centre` and `--io-iters`; `adam` is dropped where io-iters is 0) the val pairs of test_data/ are
predicted (through the Python API, the same code as `l2r predict`) and scored with the evaluator. Printed per
setting: seconds per pair, the seconds of each stage, mean Dice (and the zero-field Dice for scale), HD95, the
official SDlogJ, the largest fraction of voxels with det J <= 0, and, on the three synthetic pairs whose true
field is known (test_data/truth.json), the mean end-point error in voxels over the whole grid, over the organs
of the fixed image, inside its body (HU > -500) and in the air around it. No image can tell where air moves:
there the error mostly measures how the regulariser extrapolates. A second table gives, for each pair without
a true field (the inter-patient pairs: 0004<-0005 against a painted anatomy, 0004<-0006 and 0006<-0004 between
two real patients), its Dice, zero-field Dice, HD95 and fraction of det J <= 0.

    python benchmarks/accuracy_bench.py [--stages network,search,adam --stages network,adam] [--search-hw 4,6]
        [--search-grid 6] [--search-prior 0,0.1] [--search-centre none --search-centre 0,1]
        [--io-iters 0,50,100] [--io-reg 0.25]
        [--io-similarity mind|mse] [--io-field velocity|displacement]
        [--coarse-fraction 0.5] [--no-network] [--threads 2] [--checkpoint FILE] [--json OUT]
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test_data" / "AbdomenCTCT_dataset.json"


BODY_HU = -500.0
STAGE_LETTERS = {"network": "n", "affine": "f", "search": "s", "adam": "a"}  # stage seconds column


def end_point_errors(out_dir: Path, truth: dict, ds) -> dict[str, tuple[float, ...]]:
    """Per synthetic pair, in voxels: mean EPE over all voxels, the fixed image's organs, its body and
    the air, then the same four for the zero field (the size of the true displacement)."""
    from l2r_submit.core import disp_files, io
    from l2r_submit.training.synthetic import field_from_truth

    result = {}
    for key, entry in truth.items():
        pair = next(p for p in ds.pairs("val") if p.key == key)
        stem = disp_files.disp_names(entry["fixed"], entry["moving"], "long")[0]
        disp = disp_files.read_disp(out_dir / f"{stem}.nii.gz", ds.shape)  # (3, I, J, K), as written
        true = field_from_truth(entry)
        err = np.linalg.norm(disp - true, axis=0)
        zero = np.linalg.norm(true, axis=0)
        organs = io.read_labels(pair.fixed.label) > 0
        body = io.read_volume(pair.fixed.image, np.float32).array > BODY_HU
        masks = (np.ones_like(body), organs, body, ~body)
        result[key] = tuple(float(e[mk].mean()) for e in (err, zero) for mk in masks)
    return result


@click.command()
@click.option("--stages", "stage_lists", multiple=True,
              help="Stages of one setting, e.g. network,search,adam; repeat for more [default: predict's default].")
@click.option("--search-hw", default="", help="Comma list of search half-widths [default: SearchConfig's].")
@click.option("--search-grid", default="", help="Comma list of search grid spacings [default: SearchConfig's].")
@click.option("--search-prior", default="",
              help="Comma list of the search's pulls towards small displacements [default: SearchConfig's, none].")
@click.option("--search-centre", "centres", multiple=True,
              help="Axes of the search's second start ('0,1') or 'none', repeatable [default: SearchConfig's].")
@click.option("--io-iters", default="", help="Comma list of settings (0 = no adam stage) [default: predict's for the stages].")
@click.option("--io-reg", type=float, default=None,
              help="Diffusion weight of the refinement [default: predict's for the stages and the field model].")
@click.option("--io-similarity", type=click.Choice(["mind", "mse"]), default="mind", show_default=True)
@click.option("--io-field", type=click.Choice(["velocity", "displacement"]), default="velocity", show_default=True)
@click.option("--coarse-fraction", type=float, default=None,
              help="Share of iterations at quarter resolution [default: predict's for the stages: 0 after the search].")
@click.option("--no-network", is_flag=True, help="Refine from a zero field instead of the network's output.")
@click.option("--threads", default=2, show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="[default: the shipped weights]")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
def main(stage_lists: tuple[str, ...], search_hw: str, search_grid: str, search_prior: str, centres: tuple[str, ...],
         io_iters: str,
         io_reg: float | None, io_similarity: str, io_field: str, coarse_fraction: float | None, no_network: bool,
         threads: int, checkpoint: Path | None, json_out: Path | None) -> None:
    from l2r_submit.core import dataset
    from l2r_submit.evaluation import evaluate
    from l2r_submit.registration import predict
    from l2r_submit.registration.predict_args import parse_axes
    from l2r_submit.registration.search import SearchConfig
    from l2r_submit.registration.stages import parse_stages

    ds = dataset.load(DATA)
    stage_sets = [parse_stages(s) for s in stage_lists] or [predict.DEFAULT_STAGES]
    hws = [int(v) for v in search_hw.split(",") if v] or [SearchConfig().hw]
    grids = [int(v) for v in search_grid.split(",") if v] or [SearchConfig().grid]
    priors = [float(v) for v in search_prior.split(",") if v] or [SearchConfig().prior]
    try:
        axes = [parse_axes(c) for c in centres] or [SearchConfig().centre_axes]
        settings = [(st, SearchConfig(grid=g, hw=hw, prior=w, centre_axes=a), int(it) if it else None)
                    for st in stage_sets for it in io_iters.split(",") for hw in (hws if "search" in st else hws[:1])
                    for g in (grids if "search" in st else grids[:1])
                    for w in (priors if "search" in st else priors[:1])
                    for a in (axes if "search" in st else axes[:1])]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--search-*") from None
    truth = json.loads((ROOT / "test_data" / "truth.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (names, search_cfg, iters) in enumerate(settings):
            out = Path(tmp) / f"setting{n}"
            io_cfg = predict.default_io(iters, io_field, io_reg, io_similarity, after_search="search" in names)
            if coarse_fraction is not None:
                io_cfg = replace(io_cfg, coarse_fraction=coarse_fraction)
            manifest = predict.run(predict.PredictConfig(ds, out, "val", checkpoint=checkpoint, device="cpu",
                                                         io=io_cfg, network=not no_network, stages=names,
                                                         search=search_cfg,
                                                         threads=threads, progress=False, keep_freed_memory=True))
            label = "+".join(manifest["settings"]["stages"]) + (
                f" hw{search_cfg.hw} g{search_cfg.grid}" + (f" p{search_cfg.prior:g}" if search_cfg.prior else "")
                + ("" if search_cfg.centre_axes is None  # the default: from the header
                   else f" c{''.join(map(str, search_cfg.centre_axes)) or '-'}")
                if "search" in names else "")
            secs = [p["seconds"] for p in manifest["pairs"].values() if p["status"] == "done"]
            if len(secs) != len(manifest["pairs"]):
                raise SystemExit(f"{label}: some pairs failed, see {out / 'run.json'}")
            m = evaluate.run(evaluate.EvalConfig(ds, out, "val", progress=False)).metrics
            epe = end_point_errors(out, truth, ds)
            cases = m["cases"]
            stage_secs = {k: float(np.mean([p["stage_seconds"][k] for p in manifest["pairs"].values()]))
                          for k in manifest["settings"]["stages"]}
            rows.append({
                "setting": label,
                "io_iters": io_cfg.iters,
                "seconds_per_pair": float(np.mean(secs)),
                "stage_seconds": stage_secs,
                "DSC": {k: c["DSC"]["mean"] for k, c in cases.items()},
                "DSC_zero_field": {k: c["DSC_zero_field"]["mean"] for k, c in cases.items()},
                "HD95": {k: c["HD95"]["mean"] for k, c in cases.items()},
                "jac_nonpos_fraction": {k: c["jac_nonpos_fraction"]["mean"] for k, c in cases.items()},
                "HD95_mean": m["aggregates"]["HD95"]["mean"],
                "LogJacDetStd_mean": m["aggregates"]["LogJacDetStd"]["mean"],
                "jac_nonpos_fraction_max": max(c["jac_nonpos_fraction"]["mean"] for c in cases.values()),
                "EPE_all": {k: v[0] for k, v in epe.items()},
                "EPE_organs": {k: v[1] for k, v in epe.items()},
                "EPE_body": {k: v[2] for k, v in epe.items()},
                "EPE_air": {k: v[3] for k, v in epe.items()},
                "EPE_zero_field": {k: v[4:] for k, v in epe.items()},
            })
    print(f"CPU, {threads} threads, {len(ds.pairs('val'))} val pairs of test_data/ (192x160x256); refinement: "
          + ", ".join(f"{k} {v}" for k, v in asdict(io_cfg).items() if k != "iters")
          + ("; no network" if no_network else ""))
    print(f"{'setting':<28} {'io':>4} {'s/pair':>7} {'stage seconds':<24} {'Dice':>6} {'(zero)':>6} {'minGain':>7} {'HD95':>6} {'SDlogJ':>7} "
          f"{'J<=0 max':>9} {'EPE all':>8} {'EPE org':>8} {'EPE body':>8} {'EPE air':>8} {'EPE max':>8}")
    for r in rows:
        gain = min(r["DSC"][k] - r["DSC_zero_field"][k] for k in r["DSC"])
        stage_text = " ".join(f"{STAGE_LETTERS.get(k, k)}{v:.1f}" for k, v in r["stage_seconds"].items())
        print(f"{r['setting']:<28} {r['io_iters']:>4} {r['seconds_per_pair']:>7.2f} {stage_text:<24} {np.mean(list(r['DSC'].values())):>6.3f} "
              f"{np.mean(list(r['DSC_zero_field'].values())):>6.3f} {gain:>+7.3f} {r['HD95_mean']:>6.2f} "
              f"{r['LogJacDetStd_mean']:>7.4f} {r['jac_nonpos_fraction_max']:>9.2e} "
              + " ".join(f"{np.mean(list(r[k].values())):>8.3f}" for k in ("EPE_all", "EPE_organs", "EPE_body", "EPE_air"))
              + f" {max(r['EPE_all'].values()):>8.3f}")
    zero = np.mean(list(rows[0]["EPE_zero_field"].values()), axis=0)
    print(f"{'zero field':<28} {'':>4} {'':>7} {'':<24} {np.mean(list(rows[0]['DSC_zero_field'].values())):>6.3f} {'':>6} {'':>7} {'':>6} "
          f"{0.0:>7.4f} {0.0:>9.2e} " + " ".join(f"{v:>8.3f}" for v in zero))
    print("stage seconds (n network, f affine, s search, a adam), mean per pair; "
          "Dice/(zero): mean over val pairs, registered / zero field; minGain: smallest per-pair Dice gain; "
          "EPE (voxels): mean over the synthetic pairs, all voxels / fixed organs / fixed body (HU > -500) / air; "
          "EPE max: worst synthetic pair, all voxels")
    print("Dice per pair (zero field in brackets):")
    for r in rows:
        print(f"  {r['setting']:<28} {r['io_iters']:>4} " + "  ".join(
            f"{k}: {v:.3f} ({r['DSC_zero_field'][k]:.3f})" for k, v in r["DSC"].items()))
    real = [k for k in rows[0]["DSC"] if k not in truth]
    if real:
        print("pairs without a true field (inter-patient): Dice / (zero field) / HD95 / J<=0 fraction")
        print(f"{'setting':<28} {'iters':>5} " + " ".join(f"{k:>40}" for k in real))
        for r in rows:
            print(f"{r['setting']:<28} {r['io_iters']:>5} " + " ".join(
                f"{r['DSC'][k]:>7.3f} ({r['DSC_zero_field'][k]:.3f}) {r['HD95'][k]:>7.2f} {r['jac_nonpos_fraction'][k]:>9.2e}".rjust(40)
                for k in real))
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
