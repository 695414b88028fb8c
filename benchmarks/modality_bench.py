"""Another modality: the default stages on MR-like versions of test_data's val pairs.

The held-out data may be MR in the same JSON format (modality other than CT). The search and the
refinement then normalise each image by its own 1st and 99th percentiles instead of a CT window
(``l2r_submit.registration.features.normalise_intensity``). This benchmark checks that path on anatomy whose
answer is known: every val pair of ``test_data`` (three synthetic deformations with their true field, the
painted pair, the two real inter-patient pairs) is turned into an MR-like pair and registered with
predict's default stages, and the result is scored like the CT pair.

MR-like images, made here from the CT's Hounsfield units (a caricature of MR contrast, not a simulator):
  * a piecewise-linear map from HU to signal that is not monotonic: fat brighter than the organs, water
    darker (``T1``), or water brightest and fat bright (``T2``); air and cortical bone dark in both;
  * a smooth multiplicative bias field, exp of a random quadratic in the normalised coordinates (about
    +/-25%), different for the two images of a pair;
  * Rician-like noise (the magnitude of the signal plus complex Gaussian noise, sigma 2% of the range);
  * arbitrary units (signal x 800).

Settings, each on every pair, all with predict's default stages (``search,adam``) and settings:
  * ``CT``: the original CT pair, CT window (the reference);
  * ``T1``: both images T1-like, percentiles (modality "MR");
  * ``T1 <- T2``: the moving image T2-like, the fixed T1-like, percentiles (two contrasts);
  * ``T1 <- CT``: the moving image T1-like, the fixed the CT itself, each normalised as its own modality
    (a dataset JSON whose ``modality`` is ``{"0": "MR", "1": "CT"}``; the CT window for the CT image);
  * ``T1 <- CT, one flag``: the same pair with percentiles for both images (what predict did before it
    read each image's modality, for a JSON whose channel "0" is MR);
  * ``T1 <- CT, CT flag``: the same pair with the CT window for both (what it did when channel "0" was CT:
    the MR-like image clipped to the window). Not counted in the exit status;
  * ``fixed T1 <- CT``: the other direction, the fixed image T1-like and the moving one the CT, each
    normalised as its own modality (AbdomenMRCT registers this way: fixed MR, moving CT). The fixed image's
    air is noisy and the moving one's is flat: the case that the noise floor of
    ``features.normalise_intensity`` was made for;
  * ``masked T1``: both images T1-like with everything outside each one's body (its CT below -500 HU) set
    to 0, as preprocessed MR often is (skull-stripped brains, masked abdomens): each background is flat, so
    both images are floored (their noise inside the body stays).

Printed per pair and setting: mean Dice over labels 1-13 present in both maps, the end-point error inside
the body for the synthetic pairs (voxels), the fraction of det J <= 0, seconds. Exits 1 if a setting with
an MR-like image ends below the zero field on any pair. One process, CPU.

``--peer``: ConvexAdam (PyPI ``convexAdam`` 0.2.0, ``convex_adam_pt`` with its defaults, as
benchmarks/peer_bench.py runs it) registers the same arrays beside ours in each setting, with the images as
they are (MIND-SSC is insensitive to the scale of the intensities; ConvexAdam has no modality setting).
It is imported from the environment made by benchmarks/setup_peer.sh, so the bench then runs there; its
figures are printed but do not count in the exit status.

``--io-iters N`` / ``--io-iters-non-ct N``: the refinement's iterations as ``l2r predict`` takes them
(the latter for a pair with an image flagged non-CT, unless it is floored against a CT image: ``T1``, ``T1 <-
T2`` and ``T1 <- CT, one flag``; ``T1 <- CT`` and ``fixed T1 <- CT`` floor the MR-like image against the CT
and get ``--io-iters``, as two CT images).
``--noise-floor K``: the noise floor of non-CT images (``features.NOISE_FLOOR_SIGMAS``) for this run; 0 is
the behaviour before the floor existed.

    python benchmarks/modality_bench.py [--threads 2] [--pairs 0001,0004_0006] [--json OUT]
    python benchmarks/modality_bench.py --settings "T1 <- T2" --io-iters-non-ct 80
    python benchmarks/modality_bench.py --settings "fixed T1 <- CT" --noise-floor 0   # as before the floor
    .venv-peer/bin/python benchmarks/modality_bench.py --peer --settings "T1;T1 <- T2"
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test_data" / "AbdomenCTCT_dataset.json"
TRUTH = ROOT / "test_data" / "truth.json"
BODY_HU = -500.0  # inside the body: the fixed CT above this

# (HU, signal) knots of the caricatures; np.interp holds the end values beyond them
CONTRASTS = {
    "T1": ((-1000, 0.0), (-900, 0.02), (-150, 0.9), (-60, 0.9), (0, 0.15), (30, 0.35), (60, 0.55),
           (150, 0.5), (300, 0.45), (700, 0.1), (3000, 0.05)),
    "T2": ((-1000, 0.0), (-900, 0.02), (-150, 0.7), (-60, 0.65), (0, 1.0), (30, 0.5), (60, 0.35),
           (150, 0.4), (300, 0.35), (700, 0.05), (3000, 0.02)),
}
SETTINGS = ("CT", "T1", "T1 <- T2", "T1 <- CT", "T1 <- CT, one flag", "T1 <- CT, CT flag", "fixed T1 <- CT",
            "masked T1")


def numbered_pairs(val: list, pairs: str | None) -> list[tuple[int, object]]:
    """``(n, pair)`` for the val pairs whose key contains one of the comma-separated ``pairs`` (None: all); ``n``
    is the pair's place among all val pairs, which seeds its MR-like images (noise, bias field), so a run with
    ``--pairs`` gives the figures of a full run."""
    wanted = pairs.split(",") if pairs else None
    return [(n, p) for n, p in enumerate(val) if wanted is None or any(w in p.key for w in wanted)]


def pair_seeds(n: int) -> tuple[int, int]:
    """The seeds of the fixed and the moving MR-like image of the val pair at place ``n`` (:func:`numbered_pairs`)."""
    return 2 * n, 2 * n + 1


def mr_like(hu: np.ndarray, contrast: str, seed: int) -> np.ndarray:
    """An MR-like image of a CT: the contrast's map, a smooth bias field, Rician-like noise, x 800.

    Shape: (I, J, K) HU -> (I, J, K) float32, arbitrary units >= 0.
    """
    knots = np.array(CONTRASTS[contrast], dtype=np.float64)
    signal = np.interp(hu.astype(np.float64), knots[:, 0], knots[:, 1])
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in hu.shape), indexing="ij")
    poly = sum(c * a for c, a in zip(rng.uniform(-0.15, 0.15, 3), axes))
    poly = poly + sum(c * a * a for c, a in zip(rng.uniform(-0.1, 0.1, 3), axes))
    signal = signal * np.exp(poly)
    noise = rng.normal(0.0, 0.02, (2, *hu.shape))
    return (800.0 * np.hypot(signal + noise[0], noise[1])).astype(np.float32)


def peer_registration():
    """ConvexAdam's ``convex_adam_pt`` with its defaults, on CPU, as a function (moving, fixed) -> field in our
    contract (3, I, J, K) voxels. Exits with one line when the package is not importable here."""
    try:
        from convexAdam.convex_adam_MIND import convex_adam_pt
    except ImportError:
        raise SystemExit("--peer: convexAdam is not importable by this Python; run `bash benchmarks/setup_peer.sh` "
                         "and then this bench with .venv-peer/bin/python") from None
    import torch

    def run(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        disp = convex_adam_pt(fixed.astype(np.float64), moving.astype(np.float64), device=torch.device("cpu"))
        return np.moveaxis(np.asarray(disp), -1, 0).astype(np.float32)  # (I, J, K, 3) -> (3, I, J, K)

    return run


@click.command()
@click.option("--pairs", default=None, help="Comma list of substrings of pair keys [default: every val pair].")
@click.option("--settings", "only", default=None,
              help=f"Semicolon list of settings to run [default: all: {'; '.join(SETTINGS)}].")
@click.option("--threads", default=2, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
@click.option("--peer", is_flag=True, help="Also run ConvexAdam on the same arrays (run with .venv-peer/bin/python).")
@click.option("--io-iters", type=click.IntRange(min=1), default=None,
              help="Refinement iterations, as l2r predict's option (it sets both) [default: predict's].")
@click.option("--io-iters-non-ct", type=click.IntRange(min=1), default=None,
              help="Refinement iterations for pairs with an image flagged non-CT, unless floored against a "
                   "soft-window CT, as l2r predict's option [default: predict's].")
@click.option("--noise-floor", type=click.FloatRange(min=0), default=None,
              help="The noise floor of non-CT images in noise sigmas; 0: none, as before it existed "
                   "[default: features.NOISE_FLOOR_SIGMAS].")
def main(pairs: str | None, only: str | None, threads: int, json_out: Path | None, peer: bool,
         io_iters: int | None, io_iters_non_ct: int | None, noise_floor: float | None) -> None:
    import torch

    from l2r_submit.core import dataset, io, runtime
    from l2r_submit.evaluation import metrics
    from l2r_submit.registration import defaults, features, stages
    from l2r_submit.registration.search import SearchConfig
    from l2r_submit.training.synthetic import field_from_truth

    chosen = SETTINGS if only is None else tuple(x.strip() for x in only.split(";"))
    unknown = [x for x in chosen if x not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {', '.join(map(repr, unknown))}; expected among {'; '.join(SETTINGS)}")
    convexadam = peer_registration() if peer else None
    if noise_floor is not None:  # this process only: the bench's own setting, never predict's
        features.NOISE_FLOOR_SIGMAS = noise_floor
    runtime.keep_freed_memory()  # as l2r predict does
    torch.set_num_threads(threads)
    names = defaults.DEFAULT_STAGES
    io_cfg = defaults.io_for_stages(names, None, io_iters, iters_non_ct=io_iters_non_ct)
    truth = json.loads(TRUTH.read_text())
    val = numbered_pairs(dataset.load(DATA).pairs("val"), pairs)
    if not val:
        raise SystemExit(f"--pairs {pairs}: no val pair of {DATA} matches")
    across = io_cfg.iters if io_cfg.iters_non_ct is None else io_cfg.iters_non_ct
    print(f"stages {','.join(names)}; refinement {io_cfg.iters} iterations for CT pairs and MR-like against CT, "
          f"{across} with an image flagged non-CT otherwise; noise floor {features.NOISE_FLOOR_SIGMAS:g} sigmas; CPU, {threads} threads")
    print("Dice, e: end-point error in the body (voxels), seconds")
    columns = [c for s in chosen for c in ((s, f"{s} | ConvexAdam") if peer else (s,))]
    print(f"{'pair':<12} {'zero':>12} " + " ".join(f"{s:>22}" for s in columns))
    rows, failed = [], []
    for n, pair in val:
        fixed_hu = io.read_volume(pair.fixed.image, np.float32).array
        moving_hu = io.read_volume(pair.moving.image, np.float32).array
        fixed_seg, moving_seg = io.read_labels(pair.fixed.label), io.read_labels(pair.moving.label)
        labels = [k for k in range(1, 14) if (fixed_seg == k).any() and (moving_seg == k).any()]
        body = fixed_hu > BODY_HU
        true = field_from_truth(truth[pair.key]) if pair.key in truth else None

        def score(disp: np.ndarray) -> dict:
            warped = metrics.warp_labels(moving_seg, disp)
            out = {"dice": float(np.mean([metrics.dice(fixed_seg == k, warped == k) for k in labels])),
                   "jac_nonpos": float((metrics.jacobian_determinant(disp) <= 0).mean())}
            if true is not None:
                out["epe_body"] = float(np.linalg.norm(disp - true, axis=0)[body].mean())
            return out

        row = {"pair": pair.key, "zero": score(np.zeros((3, *fixed_hu.shape), np.float32)),
               "refinement_iters": {"CT, or floored against CT": io_cfg.iters, "other non-CT": across}}
        fixed_seed, moving_seed = pair_seeds(n)
        fixed_t1, moving_t1 = mr_like(fixed_hu, "T1", fixed_seed), mr_like(moving_hu, "T1", moving_seed)
        inputs = {"CT": (moving_hu, fixed_hu, True), "T1": (moving_t1, fixed_t1, False),
                  "T1 <- T2": (mr_like(moving_hu, "T2", moving_seed), fixed_t1, False),
                  "T1 <- CT": (moving_t1, fixed_hu, (False, True)), "T1 <- CT, one flag": (moving_t1, fixed_hu, False),
                  "T1 <- CT, CT flag": (moving_t1, fixed_hu, True),
                  "fixed T1 <- CT": (moving_hu, fixed_t1, (True, False)),
                  "masked T1": (np.where(moving_hu > BODY_HU, moving_t1, 0.0).astype(np.float32),
                                np.where(body, fixed_t1, 0.0).astype(np.float32), False)}
        for setting, (m, f, ct) in ((k, v) for k, v in inputs.items() if k in chosen):
            built = stages.build(names, None, SearchConfig(), io_cfg, ct)
            t0 = time.perf_counter()
            disp, _ = stages.run(built, torch.from_numpy(m)[None, None], torch.from_numpy(f)[None, None])
            row[setting] = score(disp[0].numpy())
            row[setting]["seconds"] = round(time.perf_counter() - t0, 1)
            if setting != "CT" and ct is not True and row[setting]["dice"] < row["zero"]["dice"]:
                failed.append(f"{pair.key} {setting}")
            if convexadam is not None:
                t0 = time.perf_counter()
                row[f"{setting} | ConvexAdam"] = score(convexadam(m, f))
                row[f"{setting} | ConvexAdam"]["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)

        def cell(r: dict) -> str:
            epe = f" e{r['epe_body']:.2f}" if "epe_body" in r else ""
            return f"{r['dice']:.3f}{epe}" + (f" ({r['seconds']:.0f}s)" if "seconds" in r else "")

        print(f"{pair.key[:4]}<-{pair.key[12:16]:<6} {cell(row['zero']):>12} "
              + " ".join(f"{cell(row[s]):>22}" for s in columns), flush=True)
    print(f"{'mean':<12} {np.mean([r['zero']['dice'] for r in rows]):>12.3f} "
          + " ".join(f"{np.mean([r[s]['dice'] for r in rows]):>22.3f}" for s in columns))
    for s in columns:
        epes = [r[s]["epe_body"] for r in rows if "epe_body" in r[s]]
        print(f"{s}: worst J<=0 {max(r[s]['jac_nonpos'] for r in rows):.1e}"
              + (f", mean EPE in the body (synthetic pairs) {np.mean(epes):.3f}" if epes else ""))
    if json_out:
        json_out.write_text(json.dumps(rows, indent=1))
    if failed:
        print(f"below the zero field: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
