"""Large offsets on real anatomy: how each stage setting copes when two patients are also shifted apart.

Inter-patient scans of the challenge differ by more than anatomy: the patient lies elsewhere in the crop,
so the same organ can sit 15-40 voxels away. ``test_data`` has three inter-patient val pairs (0004<-0005
against a painted anatomy; 0004<-0006 and 0006<-0004 between two real patients) whose organs are mostly
within 10-25 voxels. Here each of them is also run with its moving image (and its label map) translated by
a known whole-voxel offset, the uncovered part filled with air (-1024 HU) and background: the anatomy is
still real, only the offset is added. A setting that cannot find large displacements loses these cases.

For every stage setting (``--stages``, as `l2r predict` names them; each with predict's default search
and refinement settings, ``--io-iters`` overriding the refinement's iterations; a setting with the search
is run once per ``--search-range GRID,HW``, the search's control-grid spacing and half-width in grid steps,
predict's ``--search-grid`` and ``--search-hw``, per ``--search-prior W``, predict's pull towards small
displacements, and per ``--search-centre AXES|none``, the search's second start; a setting with the ``affine``
stage once per ``--affine-model``) and every case: the mean
Dice over labels 1-13 present in both label maps (warped with the evaluator's nearest-neighbour rule), the
zero-field Dice, the largest fraction of det J <= 0 and the seconds of the stages. One process, CPU.

    python benchmarks/offset_bench.py [--stages adam --stages search,adam] [--io-iters 100]
        [--search-range 6,4 --search-range 8,5] [--search-prior 0 --search-prior 0.3]
        [--search-centre none --search-centre 0,1] [--stages affine,search,adam --affine-model translation]
        [--offsets "0,0,0;16,0,0;0,16,-16;-20,10,20"] [--fixed-mr]
        [--threads 2] [--json OUT]

``--fixed-mr``: the fixed image made MR-like (``modality_bench.mr_like``, T1, seeded as that bench seeds the
pair, so the unshifted cases give its ``fixed T1 <- CT`` figures) and read as another modality, the moving
one kept CT: AbdomenMRCT's direction, with the same offsets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test_data" / "AbdomenCTCT_dataset.json"
INTER_PATIENT = ("0004_0000<--0005_0000", "0004_0000<--0006_0000", "0006_0000<--0004_0000")
AIR_HU = -1024.0


def translate(array: np.ndarray, offset: tuple[int, ...], fill: float) -> np.ndarray:
    """``out[p + offset] = array[p]``, ``fill`` where nothing lands. Shape: (I, J, K) -> the same."""
    out = np.full_like(array, fill)
    src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, array.shape))
    dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, array.shape))
    out[dst] = array[src]
    return out


def mean_dice(fixed_seg: np.ndarray, moving_seg: np.ndarray, disp: np.ndarray) -> float:
    """Mean Dice over the labels 1-13 present in both maps, the moving one warped by ``disp`` (3, I, J, K)."""
    from l2r_submit.evaluation import metrics

    warped = metrics.warp_labels(moving_seg, disp)
    labels = [k for k in range(1, 14) if (fixed_seg == k).any() and (moving_seg == k).any()]
    return float(np.mean([metrics.dice(fixed_seg == k, warped == k) for k in labels]))


def parse_offsets(text: str) -> list[tuple[int, int, int]]:
    offsets = []
    for part in text.split(";"):
        values = tuple(int(v) for v in part.split(","))
        if len(values) != 3:
            raise click.BadParameter(f"'{part}': expected three integers I,J,K", param_hint="--offsets")
        offsets.append(values)
    return offsets


def parse_range(text: str) -> tuple[int, int]:
    """``"8,5"`` -> (grid 8, hw 5)."""
    try:
        grid, hw = (int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}': expected two integers GRID,HW", param_hint="--search-range") from None
    return grid, hw


@click.command()
@click.option("--stages", "stage_lists", multiple=True, help="Stage list, repeatable [default: adam and search,adam].")
@click.option("--io-iters", type=int, default=None, help="Refinement iterations [default: predict's].")
@click.option("--search-range", "ranges", multiple=True,
              help="GRID,HW of the search, repeatable; each setting with the search runs once per range "
                   "[default: predict's].")
@click.option("--search-prior", "priors", multiple=True, type=click.FloatRange(min=0),
              help="Pull of the search towards small displacements, repeatable; each setting with the search "
                   "runs once per range and prior [default: predict's, none].")
@click.option("--search-centre", "centres", multiple=True,
              help="Axes along which the search also starts from the bodies' centroids ('0,1'), or 'none'; "
                   "repeatable, each setting with the search runs once per value [default: predict's].")
@click.option("--affine-model", "affine_models", multiple=True, type=click.Choice(["affine", "translation"]),
              help="What the affine stage fits, repeatable; each setting with it runs once per model [default: "
                   "predict's].")
@click.option("--offsets", default="0,0,0;16,0,0;0,16,-16;-20,10,20", show_default=True,
              help="Translations of the moving image in voxels, ';' between them.")
@click.option("--fixed-mr", is_flag=True,
              help="The fixed image MR-like (modality_bench's T1) and read as another modality; the moving one CT.")
@click.option("--threads", default=2, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
def main(stage_lists: tuple[str, ...], io_iters: int | None, ranges: tuple[str, ...], priors: tuple[float, ...],
         centres: tuple[str, ...], affine_models: tuple[str, ...], offsets: str, fixed_mr: bool, threads: int,
         json_out: Path | None) -> None:
    import torch

    from l2r_submit.core import dataset, io
    from l2r_submit.evaluation import metrics
    from l2r_submit.registration import predict, stages
    from l2r_submit.registration.affine import AffineConfig
    from l2r_submit.registration.predict_args import parse_axes
    from l2r_submit.registration.search import SearchConfig

    torch.set_num_threads(threads)
    shifts = parse_offsets(offsets)
    try:
        default = SearchConfig()
        grids = [parse_range(r) for r in ranges] or [(default.grid, default.hw)]
        axes = [parse_axes(c) for c in centres] or [default.centre_axes]  # predict's own parser
        searches = [SearchConfig(grid=g, hw=h, prior=w, centre_axes=a) for g, h in grids
                    for w in priors or (default.prior,) for a in axes]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--search-range/--search-prior/--search-centre") from None
    lists = [stages.parse_stages(s) for s in stage_lists] or [("adam",), ("search", "adam")]
    io_cfgs = {names: predict.default_io(io_iters, after_search="search" in names) for names in lists}
    if affine_models and not any("affine" in names for names in lists):
        raise click.BadParameter("no --stages setting runs the affine stage, so it would change nothing",
                                 param_hint="--affine-model")
    affines = [AffineConfig(model=m) for m in affine_models] or [AffineConfig()]
    # a setting: (its column name, stage names, search settings, affine stage settings)
    settings = []
    for names in lists:
        for cfg in searches if "search" in names else searches[:1]:
            for aff in affines if "affine" in names else affines[:1]:
                label = "+".join(names) + (f" g{cfg.grid}h{cfg.hw}" if "search" in names and len(ranges) > 1 else "") \
                    + (f" p{cfg.prior:g}" if "search" in names and len(priors) > 1 else "") \
                    + (f" c{''.join(map(str, cfg.centre_axes)) or '-'}" if "search" in names and len(centres) > 1
                       else "") + (f" {aff.model}" if "affine" in names and len(affine_models) > 1 else "")
                settings.append((label, names, cfg, aff))
    pairs = {p.key: p for p in dataset.load(DATA).pairs("val")}
    place = {key: n for n, key in enumerate(pairs)}  # a pair's place among the val pairs seeds its MR-like images
    ct = (True, False) if fixed_mr else True  # (moving, fixed) modalities: CT, or CT against another modality
    if fixed_mr:
        from modality_bench import mr_like, pair_seeds
        print("fixed images MR-like (T1), read as another modality; moving images CT")
    rows = []
    for names, cfg in io_cfgs.items():
        print(f"{'+'.join(names)}: refinement {cfg.iters} iterations ({cfg.field}, quarter-resolution share "
              f"{cfg.coarse_fraction})" if "adam" in names else f"{'+'.join(names)}: no refinement")
    print(f"CPU, {threads} threads; search " + "; ".join(f"grid {c.grid}, hw {c.hw} (+/-{c.grid * c.hw} voxels), "
                                                       f"prior {c.prior:g}, centre axes {c.axes or 'none'}"
                                                       for c in searches))
    print(f"{'pair':<12} {'offset':<14} {'zero':>6} " + " ".join(f"{label:>16}" for label, *_ in settings))
    for key in INTER_PATIENT:
        pair = pairs[key]
        fixed = io.read_volume(pair.fixed.image, np.float32).array
        if fixed_mr:
            fixed = mr_like(fixed, "T1", pair_seeds(place[key])[0])
        fixed_seg = io.read_labels(pair.fixed.label)
        moving_raw = io.read_volume(pair.moving.image, np.float32).array
        moving_seg_raw = io.read_labels(pair.moving.label)
        for shift in shifts:
            moving = translate(moving_raw, shift, AIR_HU)
            moving_seg = translate(moving_seg_raw, shift, 0)
            m, f = torch.from_numpy(moving)[None, None], torch.from_numpy(fixed)[None, None]
            row = {"pair": key, "offset": shift, "zero": mean_dice(fixed_seg, moving_seg, np.zeros((3, *fixed.shape), np.float32))}
            for label, names, search_cfg, affine_cfg in settings:
                built = stages.build(names, None, search_cfg, io_cfgs[names], ct, affine_cfg=affine_cfg)
                t0 = time.perf_counter()
                disp, _ = stages.run(built, m, f)
                seconds = time.perf_counter() - t0
                d = disp[0].numpy()
                row[label] = {"dice": mean_dice(fixed_seg, moving_seg, d), "seconds": seconds,
                              "jac_nonpos": float((metrics.jacobian_determinant(d) <= 0).mean())}
            rows.append(row)
            print(f"{key[:4]}<-{key[12:16]:<6} {str(shift):<14} {row['zero']:>6.3f} "
                  + " ".join(f"{row[label]['dice']:>9.3f} ({row[label]['seconds']:>3.0f}s)" for label, *_ in settings),
                  flush=True)
    print(f"{'mean':<27} {np.mean([r['zero'] for r in rows]):>6.3f} "
          + " ".join(f"{np.mean([r[name]['dice'] for r in rows]):>9.3f} ({np.mean([r[name]['seconds'] for r in rows]):>3.0f}s)"
                     for name, *_ in settings))
    for name, *_ in settings:
        print(f"{name}: worst J<=0 {max(r[name]['jac_nonpos'] for r in rows):.1e}, smallest gain over zero "
              f"{min(r[name]['dice'] - r['zero'] for r in rows):+.3f}")
    if json_out:
        json_out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
