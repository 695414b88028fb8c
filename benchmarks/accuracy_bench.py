"""Accuracy and speed of `l2r predict` on test_data/, network only and with instance optimisation.

For each `--io-iters` setting the val pairs of test_data/ are predicted (through the Python API, the
same code as `l2r predict`) and scored with the evaluator. Printed per setting: seconds per pair,
mean Dice (and the zero-field Dice for scale), HD95, the official SDlogJ, the largest fraction of
voxels with det J <= 0, and, on the three synthetic pairs whose true field is known
(test_data/truth.json), the mean end-point error in voxels over the whole grid and over the organs
of the fixed image.

    python benchmarks/accuracy_bench.py [--io-iters 0,50,100] [--io-reg 1.0] [--threads 2] [--checkpoint FILE] [--json OUT]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test_data" / "AbdomenCTCT_dataset.json"


def end_point_errors(out_dir: Path, truth: dict, ds) -> dict[str, tuple[float, float, float, float]]:
    """Per synthetic pair, in voxels: mean EPE over all voxels and over the fixed image's organs, then the
    same for the zero field (the size of the true displacement)."""
    from l2r_submit import io
    from l2r_submit.synthetic import field_from_truth

    result = {}
    for key, entry in truth.items():
        pair = next(p for p in ds.pairs("val") if p.key == key)
        stem = io.disp_names(entry["fixed"], entry["moving"], "long")[0]
        disp = io.read_disp(out_dir / f"{stem}.nii.gz", ds.shape)  # (3, I, J, K), as written
        true = field_from_truth(entry)
        err = np.linalg.norm(disp - true, axis=0)
        zero = np.linalg.norm(true, axis=0)
        organs = io.read_labels(pair.fixed.label) > 0
        result[key] = (float(err.mean()), float(err[organs].mean()), float(zero.mean()), float(zero[organs].mean()))
    return result


@click.command()
@click.option("--io-iters", default="0,50,100", show_default=True, help="Comma list of settings (0 = network only).")
@click.option("--io-reg", type=float, default=None, help="Diffusion weight of the refinement [default: IOConfig's].")
@click.option("--threads", default=2, show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="[default: the shipped weights]")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
def main(io_iters: str, io_reg: float | None, threads: int, checkpoint: Path | None, json_out: Path | None) -> None:
    from l2r_submit import dataset, evaluate, predict
    from l2r_submit.instance import IOConfig

    ds = dataset.load(DATA)
    truth = json.loads((ROOT / "test_data" / "truth.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for iters in [int(v) for v in io_iters.split(",")]:
            out = Path(tmp) / f"io{iters}"
            manifest = predict.run(predict.PredictConfig(ds, out, "val", checkpoint=checkpoint, device="cpu",
                                                         io=IOConfig(iters, **({"reg": io_reg} if io_reg is not None else {})),
                                                         threads=threads, progress=False))
            secs = [p["seconds"] for p in manifest["pairs"].values() if p["status"] == "done"]
            if len(secs) != len(manifest["pairs"]):
                raise SystemExit(f"io-iters {iters}: some pairs failed, see {out / 'run.json'}")
            m = evaluate.run(evaluate.EvalConfig(ds, out, "val", progress=False)).metrics
            epe = end_point_errors(out, truth, ds)
            cases = m["cases"]
            rows.append({
                "io_iters": iters,
                "seconds_per_pair": float(np.mean(secs)),
                "DSC": {k: c["DSC"]["mean"] for k, c in cases.items()},
                "DSC_zero_field": {k: c["DSC_zero_field"]["mean"] for k, c in cases.items()},
                "HD95_mean": m["aggregates"]["HD95"]["mean"],
                "LogJacDetStd_mean": m["aggregates"]["LogJacDetStd"]["mean"],
                "jac_nonpos_fraction_max": max(c["jac_nonpos_fraction"]["mean"] for c in cases.values()),
                "EPE_all": {k: v[0] for k, v in epe.items()},
                "EPE_organs": {k: v[1] for k, v in epe.items()},
                "EPE_zero_field": {k: v[2:] for k, v in epe.items()},
            })
    reg = IOConfig().reg if io_reg is None else io_reg
    print(f"CPU, {threads} threads, {len(ds.pairs('val'))} val pairs of test_data/ (192x160x256), refinement diffusion weight {reg:g}")
    print(f"{'io-iters':>8} {'s/pair':>7} {'Dice':>6} {'(zero)':>6} {'minGain':>7} {'HD95':>6} {'SDlogJ':>7} "
          f"{'J<=0 max':>9} {'EPE all':>8} {'EPE org':>8} {'EPE max':>8}")
    for r in rows:
        gain = min(r["DSC"][k] - r["DSC_zero_field"][k] for k in r["DSC"])
        print(f"{r['io_iters']:>8} {r['seconds_per_pair']:>7.2f} {np.mean(list(r['DSC'].values())):>6.3f} "
              f"{np.mean(list(r['DSC_zero_field'].values())):>6.3f} {gain:>+7.3f} {r['HD95_mean']:>6.2f} "
              f"{r['LogJacDetStd_mean']:>7.4f} {r['jac_nonpos_fraction_max']:>9.2e} "
              f"{np.mean(list(r['EPE_all'].values())):>8.3f} {np.mean(list(r['EPE_organs'].values())):>8.3f} "
              f"{max(r['EPE_all'].values()):>8.3f}")
    zero = np.mean(list(rows[0]["EPE_zero_field"].values()), axis=0)
    print(f"{'zero':>8} {'':>7} {np.mean(list(rows[0]['DSC_zero_field'].values())):>6.3f} {'':>6} {'':>7} {'':>6} "
          f"{0.0:>7.4f} {0.0:>9.2e} {zero[0]:>8.3f} {zero[1]:>8.3f}")
    print("Dice/(zero): mean over val pairs, registered / zero field; minGain: smallest per-pair Dice gain; "
          "EPE (voxels): mean over the synthetic pairs, all voxels / fixed organs; EPE max: worst synthetic pair")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
