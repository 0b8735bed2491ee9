"""``cryoorient demo``: the whole method on the built-in density, with a short report.

1. the built-in asymmetric pseudo-molecule (:mod:`cryoorient.phantom`) is the ground truth;
2. a test dataset is simulated (.mrcs + RELION STAR with the true angles);
3. a Siamese network learns d̂_p from fresh projections of the same map (on the fly);
4. orientations of the test images are recovered from d̂_p alone (L_OR, eq. 4), and the
   part of the global ambiguity that the images can see is fixed (:mod:`cryoorient.frame`);
5. they are aligned to the truth (E_OR, eqs. 5–6) and the map is reconstructed and
   compared with the truth (FSC, after aligning the map: its frame and hand are arbitrary);
6. the orientations are refined by projection matching (:mod:`cryoorient.refine`) and
   evaluated again;
7. without the map or any training, the ab initio chain of ``cryoorient abinitio``
   (:func:`cryoorient.orientations.chain.run_chain`) runs on the same images, with the command's
   defaults (random starts explored until two agree, so the report's reproducibility verdict is
   computed), and is evaluated alike;
8. ``report.md`` with PNG plots summarises it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .io.figure import save_figure


@dataclass
class DemoSettings:
    """Sizes in pixels, lengths in Å, SNR in dB, times in seconds."""

    box: int = 32
    voxel_size: float = 4.0
    resolution: float = 8.0
    n_test: int = 1000
    snr_db: float | None = None
    arch: str = "paper"
    widths: tuple = (16, 32, 64, 128, 128, 256, 256)
    train_epochs: int = 60
    train_steps_per_epoch: int = 50
    batch_size: int = 128
    recover_restarts: int = 4
    recover_steps: int = 1500
    cutoff: float | None = None
    refine_rounds: int = 3
    abinitio_restarts: int | None = None  # random starts of the chain's global search (None: ``abinitio``'s default)
    abinitio_steps: int | None = None  # exploration steps of each start (None: ``abinitio``'s default)
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        """A reduced run (about a minute on a laptop CPU) for tests."""
        return cls(box=24, voxel_size=5.0, resolution=12.0, n_test=200, snr_db=None, widths=(8, 16, 32, 32, 64, 64, 64),
                   train_epochs=3, train_steps_per_epoch=20, batch_size=64, recover_restarts=2, recover_steps=400,
                   refine_rounds=1, abinitio_restarts=0, abinitio_steps=0)


def run_demo(out_dir, settings: DemoSettings | None = None, device="cpu", force: bool = False,
             progress: bool = True) -> dict:
    """Run the demo into ``out_dir``; returns the summary.

    ``out_dir`` is refused if it exists, unless ``force`` and cryoorient wrote it, and wherever
    ``io.check_output_dir`` refuses; it is built in a temporary directory renamed into place at the
    end (``io.output_dir``), so an error or an interruption leaves nothing behind. Sizes that cannot
    fit on the disk or in memory are refused first.
    """
    from .imaging.simulate import SimulationSettings, simulation_bytes
    from .io import output_dir, require_resources

    s = settings or DemoSettings()
    require_resources(out_dir, *simulation_bytes(SimulationSettings(n=s.n_test, size=s.box), s.box),
                      what=f"the demo's {s.n_test:,} images of {s.box}×{s.box} px")
    with output_dir(out_dir, force=force) as work:
        return _run(work, s, torch.device(device), progress)


def _run(out: Path, s: DemoSettings, device: torch.device, progress: bool) -> dict:
    """The demo's steps, writing into the (temporary) directory ``out``."""
    from .orientations.align import align_orientations, physical_error, plot_error_histogram
    from .orientations.frame import resolve_frame
    from .maps.fsc import fsc, plot_fsc
    from .io import read_star, write_map
    from .maps.transforms import align_map
    from .learning.model import SiameseNet
    from .imaging.phantom import default_density
    from .learning.model import image_features
    from .orientations.recover import recover_from_features
    from .io import write_recovered_star
    from .maps.reconstruct import reconstruct_particles
    from .maps.refine import refine
    from .imaging.simulate import SimulationSettings, load_dataset, simulate
    from .imaging.render import ProjectionRenderer
    from .learning.sources import OnTheFlySource
    from .learning.trainer import TrainConfig, Trainer
    from .orientations.chain import run_chain

    times, summary = {}, {"settings": asdict(s), "device": str(device)}

    t0 = time.perf_counter()
    truth = default_density(box_size=s.box, voxel_size=s.voxel_size, resolution=s.resolution)
    write_map(out / "truth.mrc", truth, s.voxel_size)
    sim = SimulationSettings(n=s.n_test, size=s.box, snr_db=s.snr_db, seed=s.seed + 1)
    simulate(out / "truth.mrc", out / "data", sim, device=device, progress=progress)
    data = load_dataset(out / "data")
    times["simulate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_sim = SimulationSettings(n=1, size=s.box, snr_db=s.snr_db, seed=s.seed + 2)
    renderer = ProjectionRenderer(truth, s.voxel_size, train_sim, device=device)
    source = OnTheFlySource(renderer, device=device)
    val = source.render_fixed(256, seed=s.seed + 3)
    with torch.random.fork_rng(devices=[]):  # initial weights from the demo's seed, caller's RNG untouched
        torch.manual_seed(s.seed)
        model = SiameseNet(s.arch, widths=s.widths)
    config = TrainConfig(epochs=s.train_epochs, steps_per_epoch=s.train_steps_per_epoch, batch_size=s.batch_size,
                         warmup_steps=20, patience=s.train_epochs, seed=s.seed, progress=progress)
    trainer = Trainer(model, source, val, config, out_dir=out / "training", device=device)
    train_summary = trainer.fit()
    model = trainer.model
    times["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    features = image_features(model, data.images, progress=progress)
    result = recover_from_features(model, features, restarts=s.recover_restarts, steps=s.recover_steps,
                                   cutoff=s.cutoff, seed=s.seed, device=device, progress=progress)
    result.plot(str(out / "recovery_loss.png"))
    frame = resolve_frame(data.images, result.orientations, seed=s.seed, device=device)
    q_rec = frame.quaternions
    write_recovered_star(data.particles, q_rec, out / "recovered.star")
    times["recover"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    q_true = data.params.quaternions
    alignment = align_orientations(q_true, q_rec)
    physical = physical_error(q_true, q_rec)
    plot_error_histogram(out / "errors.png", alignment, title="Orientation error after alignment")
    times["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    recon = reconstruct_particles(read_star(out / "recovered.star"), device=device, progress=progress).cpu()
    aligned = align_map(recon, torch.from_numpy(truth), voxel_size=s.voxel_size)
    write_map(out / "reconstruction.mrc", aligned.aligned.numpy(), s.voxel_size)
    truth_recon = reconstruct_particles(data.particles, device=device, progress=False).cpu()
    curve = fsc(aligned.aligned, truth, s.voxel_size)
    curve_true = fsc(truth_recon, truth, s.voxel_size)
    plot_fsc(curve, out / "fsc.png", title="FSC: reconstruction (recovered orientations) vs truth")
    _plot_slices(out / "slices.png", truth, aligned.aligned.numpy(), truth_recon.numpy())
    times["reconstruct"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    refined = refine(data.images, q_rec, rounds=s.refine_rounds, pixel_size=s.voxel_size,
                     reference=truth, align_reference=True, device=device, progress=progress)
    refined_alignment = align_orientations(q_true, refined.quaternions)
    refined_map = align_map(refined.map, torch.from_numpy(truth), voxel_size=s.voxel_size)
    refined_curve = fsc(refined_map.aligned, truth, s.voxel_size)
    write_map(out / "refined.mrc", refined_map.aligned.numpy(), s.voxel_size)
    plot_error_histogram(out / "errors_refined.png", refined_alignment, title="Orientation error after refinement")
    times["refine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    chain = run_chain(data.images, pixel_size=s.voxel_size, seed=s.seed, device=device, progress=progress,
                      global_options={k: v for k, v in (("restarts", s.abinitio_restarts), ("steps", s.abinitio_steps))
                                      if v is not None},
                      refine_options={"rounds": s.refine_rounds})
    chain_alignment = align_orientations(q_true, chain.quaternions)
    chain_map = align_map(chain.refined.map, torch.from_numpy(truth), voxel_size=s.voxel_size)
    chain_curve = fsc(chain_map.aligned, truth, s.voxel_size)
    write_map(out / "abinitio.mrc", chain_map.aligned.numpy(), s.voxel_size)
    times["abinitio"] = time.perf_counter() - t0

    summary.update({
        "E_OR_rad": alignment.error,
        "E_OR_deg": alignment.error_deg,
        "physical_error_rad": physical.error,
        "map_hand_from_orientations": physical.hand,
        "median_error_rad": float(alignment.errors.median()),
        "L_OR": result.loss,
        "validation_L_DE": train_summary.get("best_val_loss"),
        "fsc05_A": curve.resolution(0.5),
        "fsc0143_A": curve.resolution(0.143),
        "fsc05_true_orientations_A": curve_true.resolution(0.5),
        "map_hand_flipped": aligned.mirrored,
        "map_hand_correlations": [aligned.correlation_same, aligned.correlation_mirror],
        "refined_E_OR_rad": refined_alignment.error,
        "refined_rounds_kept": refined.kept,
        "refined_median_error_rad": float(refined_alignment.errors.median()),
        "refined_fsc05_A": refined_curve.resolution(0.5),
        "refined_fsc0143_A": refined_curve.resolution(0.143),
        "abinitio_E_OR_rad": chain_alignment.error,
        "abinitio_fsc05_A": chain_curve.resolution(0.5),
        "abinitio_fsc0143_A": chain_curve.resolution(0.143),
        "abinitio_report": chain.summary(),
        "seconds": times,
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    _write_report(out / "report.md", summary, train_summary)
    return summary


def _plot_slices(path, truth, recon, recon_true) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [("truth", truth), ("recovered orientations", recon), ("true orientations", recon_true)]
    fig, axes = plt.subplots(3, 3, figsize=(7.5, 7.5))
    for col, (name, m) in enumerate(maps):
        c = m.shape[0] // 2
        for row, (axis, sl) in enumerate((("z", m[c]), ("y", m[:, c]), ("x", m[:, :, c]))):
            axes[row, col].imshow(sl, cmap="gray", origin="lower")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(name, fontsize=9)
            if col == 0:
                axes[row, col].set_ylabel(f"central {axis} slice", fontsize=9)
    save_figure(fig, path, dpi=110)


def _write_report(path: Path, s: dict, train_summary: dict) -> None:
    t = s["seconds"]
    lines = [
        "# cryoorient demo",
        "",
        f"Built-in asymmetric pseudo-molecule, {s['settings']['n_test']} test projections of "
        f"{s['settings']['box']}² px at {s['settings']['voxel_size']} Å/px, "
        f"SNR {s['settings']['snr_db'] if s['settings']['snr_db'] is not None else '∞ (noiseless)'} dB, "
        f"device {s['device']}.",
        "",
        "| result | value |",
        "|---|---|",
        f"| orientation recovery error E_OR | {s['E_OR_rad']:.3f} rad ({s['E_OR_deg']:.1f}°) |",
        f"| median per-projection error | {s['median_error_rad']:.3f} rad |",
        f"| error after only a global rotation of the map and its hand | {s['physical_error_rad']:.3f} rad |",
        f"| hand of the recovered map (orientations; map correlation same / mirror) | "
        f"{s['map_hand_from_orientations']}; {s['map_hand_correlations'][0]:.3f} / {s['map_hand_correlations'][1]:.3f} |",
        f"| final L_OR (accuracy proxy without ground truth) | {s['L_OR']:.4f} rad² |",
        f"| FSC 0.5 / 0.143 vs truth, recovered orientations | {s['fsc05_A']:.1f} / {s['fsc0143_A']:.1f} Å |",
        f"| FSC 0.5 vs truth, true orientations | {s['fsc05_true_orientations_A']:.1f} Å |",
        f"| after {s['refined_rounds_kept']} of {s['settings']['refine_rounds']} rounds of refinement (kept by "
        "the half maps' resolution): E_OR (median) | "
        f"{s['refined_E_OR_rad']:.3f} ({s['refined_median_error_rad']:.3f}) rad |",
        f"| after refinement: FSC 0.5 / 0.143 vs truth | {s['refined_fsc05_A']:.1f} / {s['refined_fsc0143_A']:.1f} Å |",
        f"| no map, no training (`cryoorient abinitio` chain): E_OR | {s['abinitio_E_OR_rad']:.3f} rad |",
        f"| no map, no training: FSC 0.5 / 0.143 vs truth | {s['abinitio_fsc05_A']:.1f} / {s['abinitio_fsc0143_A']:.1f} Å |",
        "",
        "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + f"; total {sum(t.values()):.0f}.",
        "",
        "## Distance learning",
        "",
        "![estimated vs true distance](training/distances.png)",
        "",
        "![training loss](training/loss.png)",
        "",
        "## Orientation recovery",
        "",
        "![recovery loss](recovery_loss.png)",
        "",
        "![per-projection error](errors.png)",
        "",
        "## Reconstruction",
        "",
        "![FSC](fsc.png)",
        "",
        "![central slices](slices.png)",
        "",
        "## Refinement",
        "",
        "![per-projection error after refinement](errors_refined.png)",
        "",
        "## Without a map: the ab initio chain",
        "",
        "What `cryoorient abinitio` prints, on the same images (map: `abinitio.mrc`, aligned to the truth):",
        "",
        *[f"    {line}" for line in s["abinitio_report"]],
        "",
    ]
    path.write_text("\n".join(lines))
