"""Seconds per training step of the two `paper` networks of the recipe, in one process, same crop and batch:
the registration network (symmetric loss with Dice, ``l2r_submit.training.train``'s module and step) and the
segmenter (partial-label Dice, ``l2r_submit.training.segment``'s step). Their ratio scales the registration
step's measured seconds to the segmenter's (README, "The paper's recipe": expected time).

    python benchmarks/recipe_step_ratio.py [--crop 64] [--batch 2] [--steps 2] [--threads 2]

Random inputs; one warm-up step, then the mean of --steps. CPU only (the figures feed an estimate).
"""

from __future__ import annotations

import time

import click


def _timed(module, step, batch: dict, share, steps: int) -> float:
    import torch

    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        objective, _ = step(module, batch, share)
        opt.zero_grad()
        objective.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return sum(times) / len(times)


@click.command()
@click.option("--crop", type=int, default=64, show_default=True)
@click.option("--batch", type=int, default=2, show_default=True)
@click.option("--steps", type=int, default=2, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def main(crop: int, batch: int, steps: int, threads: int) -> None:
    import torch

    from l2r_submit.nets import regnet, segnet
    from l2r_submit.training import losses
    from l2r_submit.training.distributed import Dist
    from l2r_submit.training.segment import seg_step
    from l2r_submit.training.train import TrainingForward, registration_step
    from l2r_submit.training.trainer import Share

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c, b = crop, batch
    share = Share(b, b, Dist())
    reg = regnet.build("paper").train()
    ch = reg.cfg.in_channels
    items = {"moving": torch.rand(b, ch, c, c, c), "fixed": torch.rand(b, ch, c, c, c),
             "moving_seg": torch.randint(0, 14, (b, 1, c, c, c)), "fixed_seg": torch.randint(0, 14, (b, 1, c, c, c))}
    t_reg = _timed(TrainingForward(reg, True), registration_step(losses.LossWeights(), False, "cpu"), items, share,
                   steps)
    del reg, items
    seg = segnet.build("paper").train()
    n = seg.cfg.n_classes
    items = {"image": torch.rand(b, 1, c, c, c), "seg": torch.randint(0, n, (b, 1, c, c, c)),
             "annotated": torch.ones(b, n)}
    t_seg = _timed(seg, seg_step(n, False, "cpu"), items, share, steps)
    click.echo(f"crop {c}^3 batch {b}, {threads} threads: registration paper {t_reg:.2f} s/step, "
               f"segmenter paper {t_seg:.2f} s/step, ratio {t_seg / t_reg:.3f}")


if __name__ == "__main__":
    main()
