"""End-to-end distance learning benchmark (paper §3.3–3.5): SNN -> orientation recovery -> E_OR.

Protocols (``--protocol``), on 5j0n unless said otherwise:

* ``noiseless``  5,000 projections 116², uniform orientations, split 50/17/33 %; train on the
                 training split, validate on the validation split, recover the 1,650 test
                 orientations from d̂_p and report E_OR (target <= 0.10 rad).
* ``noise``      the same with white noise σ² = 16 (≈ −12 dB) (target <= 0.15 rad).
* ``ctf``        CTF (defocus 0.5–2.5 µm, 300 kV) + σ² = 16 + shifts up to ±5 px (target <= 0.20 rad).
* ``unseen``     train only on the maps of ``--structures`` (asymmetric atomic models, on the fly,
                 each rendered at the size of the test particle: ``--particle-rg``), test on the
                 5j0n test split at σ² = 16 (target <= 0.35 rad).
* ``throughput`` training pairs/s and images/s with on-the-fly simulation at 116² (target >= 20,000
                 pairs/s on an H100), per architecture.

``--estimator abinitio`` replaces the network by :mod:`cryoorient.orientations.abinitio` (in-plane-invariant
neighbours of the test images and their mirror images, then the eigenvector method): nothing is
trained, on the test protein or any other, so on the ``unseen`` protocol it is the estimator for a
protein never seen (``--neighbors``; ``--reconstruct`` and ``--refine`` apply as for the network).

``--train-source dataset`` (default for the paper protocols) trains on the training split's
images, as the paper did; ``fly`` trains on fresh on-the-fly projections of the same map with
the same imaging settings (validation and test stay the simulated dataset's splits).

``--snr DB`` sets the noise by SNR instead: σ² = 10^(−DB/10) on the standardised images (unit
signal variance, the convention of ``bench/refine_5j0n.py``; σ² = 16 is ≈ −12 dB), e.g.
``--protocol noise --snr 0``. ``--refine`` (CTF-free protocols) refines the recovered
orientations of the 1,650 test projections, with their noise, by ``cryoorient.maps.refine``
(:func:`refinement`) and reports E_OR before/after and the FSC resolution of the refined map
next to that of the true orientations on the same images and half sets.

Each run writes into ``--workdir`` (default bench/out/snn_paper/<protocol>): the simulated
dataset (reused if present), the training logs and plots of :class:`cryoorient.learning.trainer.Trainer`,
``test_distances.png`` (the paper's Fig. 6b on 1,000 test pairs), ``recovery.png`` and
``results.json``; a one-line table is printed. GPU runs need CUDA (``--device cpu`` with small
``--n/--size/--epochs`` is a smoke test).

Needs cryoorient.imaging.simulate (datasets, on-the-fly images), cryoorient.orientations.recover
(``recover_orientations``, ``DistanceFunction``) and cryoorient.orientations.align (``align_orientations``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PROTOCOLS = {
    "noiseless": dict(sigma2=None, ctf=False, shift_max=0.0, target=0.10),
    "noise": dict(sigma2=16.0, ctf=False, shift_max=0.0, target=0.15),
    "ctf": dict(sigma2=16.0, ctf=True, shift_max=5.0, target=0.20),
    "unseen": dict(sigma2=16.0, ctf=False, shift_max=0.0, target=0.35),
    "throughput": dict(sigma2=16.0, ctf=True, shift_max=5.0, target=None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), required=True)
    p.add_argument("--map", default=str(SHARED / "maps" / "5j0n.mrc"), help="test map (default: 5j0n)")
    p.add_argument("--structures", default=str(SHARED / "structures"), help="training models for 'unseen'")
    p.add_argument("--workdir", help="default: bench/out/snn_paper/<protocol>")
    p.add_argument("--estimator", choices=("snn", "abinitio"), default="snn",
                   help="snn: train the Siamese network and recover from its distances (default); abinitio: "
                        "cryoorient.orientations.abinitio on the test images, no training")
    p.add_argument("--neighbors", type=int, default=10, help="abinitio: neighbours per image and mirror image")
    p.add_argument("--arch", nargs="+", default=["paper"], help="architectures (throughput: each is timed)")
    p.add_argument("--widths", type=int, nargs="+")
    p.add_argument("--depths", type=int, nargs="+")
    p.add_argument("--train-source", choices=("dataset", "fly"), default="dataset")
    p.add_argument("--n", type=int, default=5000, help="projections in the simulated dataset")
    p.add_argument("--size", type=int, default=116, help="image edge, pixels")
    p.add_argument("--split", type=float, nargs=2, default=(0.5, 0.17))
    p.add_argument("--pixel-size", type=float, help="Å per pixel for the 'unseen' models (default: the map's)")
    p.add_argument("--resolution", type=float, help="Å, for maps from atomic models (default: 2·pixel size)")
    p.add_argument("--particle-rg", type=float, nargs="+", metavar="PX",
                   help="unseen: radii of gyration (pixels) at which each training model is rendered (one map "
                        "per value; default: the test particle's, measured on the mean test image)")
    p.add_argument("--sigma2", type=float, help="override the protocol's noise variance")
    p.add_argument("--shift-max", type=float, metavar="PX",
                   help="override the protocol's shift limit (triangular distribution, pixels)")
    p.add_argument("--snr", type=float, metavar="DB",
                   help="override the protocol's noise by SNR in dB: sigma2 = 10^(-DB/10) on standardised images")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--steps-per-epoch", type=int, help="default: dataset pass (dataset) or 100 (fly)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=15)
    p.add_argument("--val-pairs", type=int, default=7022, help="paper: 7,022 validation pairs")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"))
    p.add_argument("--restarts", type=int, default=4, help="recovery restarts")
    p.add_argument("--recover-steps", type=int, default=2000)
    p.add_argument("--max-distance", type=float, metavar="RAD",
                   help="train on min(d_q, RAD) only (pair with --cutoff below RAD)")
    p.add_argument("--cutoff", type=float, help="recovery: trust only d̂ <= cutoff (radians)")
    p.add_argument("--baseline", action="store_true", help="also recover from the Euclidean baseline (Appendix E)")
    p.add_argument("--reconstruct", action="store_true",
                   help="paper §3.5: reconstruct from the test projections with the recovered orientations; FSC (Å)")
    p.add_argument("--refine", action="store_true",
                   help="refine the recovered test orientations (cryoorient.maps.refine) on the test images; "
                        "E_OR and FSC resolution before/after, vs the true orientations")
    p.add_argument("--refine-rounds", type=int, default=5)
    p.add_argument("--throughput-steps", type=int, default=60, help="timed steps per architecture")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.shift_max is not None and not (math.isfinite(args.shift_max) and args.shift_max >= 0):
        p.error(f"--shift-max must be a finite number of pixels >= 0; got {args.shift_max}")
    if args.snr is not None and args.sigma2 is not None:
        p.error("give either --snr or --sigma2, not both")
    if args.snr is not None and not (math.isfinite(args.snr) and -60 <= args.snr <= 60):
        p.error(f"--snr must be a finite number of dB in [-60, 60]; got {args.snr}")
    if args.estimator == "abinitio" and (args.protocol == "throughput" or PROTOCOLS[args.protocol]["ctf"]):
        p.error(f"--estimator abinitio needs centred images without CTF; got --protocol {args.protocol}")
    if args.refine and PROTOCOLS[args.protocol]["ctf"]:
        p.error(f"--refine needs a CTF-free protocol (the test images carry no CTF record); got {args.protocol}")
    return args


def noise_variance(args):
    """σ² of the run: ``--sigma2``, else 10^(−snr/10) from ``--snr``, else the protocol's (None: clean)."""
    if args.sigma2 is not None:
        return args.sigma2
    if args.snr is not None:
        return 10.0 ** (-args.snr / 10.0)
    return PROTOCOLS[args.protocol]["sigma2"]


def simulation_settings(args, n: int):
    from cryoorient.imaging.simulate import SimulationSettings

    prot = PROTOCOLS[args.protocol]
    return SimulationSettings(
        n=n, size=args.size, sigma2=noise_variance(args), ctf=prot["ctf"], defocus_min=5000.0, defocus_max=25000.0,
        voltage=300.0, shift_max=prot["shift_max"] if args.shift_max is None else args.shift_max,
        shift_distribution="triangular", seed=args.seed,
    )


def dataset(args, workdir: Path, device):
    """The simulated test-protein dataset (STAR + mrcs via cryoorient.imaging.simulate), split 50/17/33."""
    from cryoorient.imaging.simulate import simulate
    from cryoorient.learning.pairs import split_indices
    from cryoorient.learning.sources import DatasetSource

    settings = simulation_settings(args, args.n)
    folder = workdir / "dataset"
    record = folder / "simulation.json"
    old = json.loads(record.read_text()) if record.is_file() else {}
    if old.get("source") == str(args.map) and old.get("settings") == json.loads(json.dumps(_asdict(settings))):
        print(f"reusing {folder}")
    else:
        simulate(args.map, folder, settings, device=device, force=True, progress=not args.quiet)
    data = DatasetSource.from_star(folder / "particles.star", device=device)
    a, b = args.split
    split = split_indices(len(data), (a, b, max(0.0, 1.0 - a - b)), seed=args.seed)
    return data, split["train"], split["val"], split["test"], settings


def _asdict(settings):
    from dataclasses import asdict

    return asdict(settings)


def new_model(args, arch):
    from cryoorient.learning.model import SiameseNet

    return SiameseNet(arch, widths=tuple(args.widths or ()), depths=tuple(args.depths or ()))


def fly_source(args, sources, settings, device, pixel_size=None, particle_rg=()):
    from cryoorient.imaging.render import ProjectionRenderer
    from cryoorient.learning.sources import OnTheFlySource

    renderers = ProjectionRenderer.from_sources(sources, settings, device, pixel_size, args.resolution,
                                                particle_rg=particle_rg)
    return OnTheFlySource(renderers, device=device)


def evaluate(args, model, test, workdir: Path, device, label: str) -> dict:
    """Test L_DE on 1,000 uniform-distance pairs (Fig. 6b) and E_OR after recovery from d̂_p
    of all test projections (``test``: a DatasetSource)."""
    from cryoorient.orientations.align import align_orientations
    from cryoorient.orientations.recover import DistanceFunction, recover_orientations
    from cryoorient.learning.plots import plot_distance_density
    from cryoorient.learning.sources import evaluation_pairs

    t0 = time.perf_counter()
    feats = model.features(test.images)
    i, j, d = evaluation_pairs(test, 1000, seed=args.seed + 7)
    d_hat = model.distance(feats[i], feats[j])
    test_loss = float(((d_hat - d.float()) ** 2).mean())
    capped = {}
    if args.max_distance is not None:  # what the network was trained for
        capped["test_loss_capped"] = float(((d_hat - d.float().clamp(max=args.max_distance)) ** 2).mean())
    plot_distance_density(d, d_hat, workdir / f"test_distances_{label}.png", title=f"{label}: 1,000 test pairs")
    fn = DistanceFunction(lambda a, b: model.distance(feats[a.to(feats.device)], feats[b.to(feats.device)]),
                          feats.shape[0])
    result = recover_orientations(fn, restarts=args.restarts, steps=args.recover_steps, cutoff=args.cutoff,
                                  seed=args.seed, device=device, progress=not args.quiet)
    result.plot(str(workdir / f"recovery_{label}.png"))
    alignment = align_orientations(test.quats.double(), result.orientations.double())
    row = {"test_loss": test_loss, "L_OR": result.loss, "E_OR": alignment.error, "E_OR_deg": alignment.error_deg,
           "recovery_seconds": result.seconds, "eval_seconds": time.perf_counter() - t0, **capped}
    if args.reconstruct:
        row.update(reconstruction(args, result.orientations, test, device))
    if args.refine:
        row.update(refinement(args, result.orientations, test, device))
    return row


def reconstruction(args, q_rec, test, device) -> dict:
    """Paper §3.5: reconstruct the map from the test projections with the recovered orientations.

    As in the paper, the map is reconstructed from the *noiseless* projections (of the test
    orientations), to measure the effect of orientation errors alone. The image frame of the
    recovered orientations is resolved from the test images themselves (``cryoorient.orientations.frame``,
    noisy when the protocol is), then the map is aligned to the truth (rotation and hand) and
    compared by FSC; the same with the true orientations gives the best the box allows.
    """
    import numpy as np

    from cryoorient.orientations.frame import resolve_frame
    from cryoorient.maps.fsc import fsc
    from cryoorient.maps.transforms import align_map
    from cryoorient.imaging.project import FourierProjector
    from cryoorient.maps.reconstruct import reconstruct
    from cryoorient.imaging.simulate import load_volume

    vol, voxel = load_volume(args.map)
    n, size = vol.shape[0], args.size
    if size < n:
        raise ValueError(f"--reconstruct needs --size >= the map box ({n})")
    lo = size // 2 - n // 2
    big = np.zeros((size,) * 3, dtype=np.float32)
    big[lo : lo + n, lo : lo + n, lo : lo + n] = vol
    truth = torch.from_numpy(big).to(device)
    q_true = test.quats.float().to(device)
    proj = FourierProjector(truth, pad=2.0, interpolation="cubic" if torch.device(device).type == "cuda" else "linear")
    clean = torch.cat([proj.images(qc) for qc in q_true.split(256)])
    frame = resolve_frame(test.images, q_rec, seed=args.seed, device=device)
    rec = reconstruct(clean, frame.quaternions, device=device, progress=False)
    aligned = align_map(rec, truth)
    best = reconstruct(clean, q_true, device=device, progress=False)
    res, res_true = fsc(aligned.aligned, truth, voxel), fsc(best, truth, voxel)
    return {"frame_ncc": frame.score, "frame_ncc_raw": frame.score_uncorrected, "fsc05_A": res.resolution(0.5),
            "fsc0143_A": res.resolution(0.143), "fsc05_true_A": res_true.resolution(0.5), "nyquist_A": 2 * voxel,
            "fsc_frequency": res.frequency.tolist(), "fsc": res.fsc.tolist(), "fsc_true": res_true.fsc.tolist()}


def refinement(args, q_rec, test, device) -> dict:
    """Refine the recovered orientations of the test projections (issue 9: from the SNN output).

    The image frame of the recovered orientations is resolved from the test images
    (``cryoorient.orientations.frame``), then ``cryoorient.maps.refine`` runs ``--refine-rounds`` rounds on the test
    images as they are (with the protocol's noise), shifts searched from 0. E_OR before and after
    (``cryoorient.orientations.align``: up to a global rotation and the hand), and the half-map FSC-0.143
    resolution against that of the same images and half sets reconstructed at the true
    orientations (``refine`` with ``rounds=0``: the same reconstruction code).
    """
    from cryoorient.orientations.align import align_orientations
    from cryoorient.orientations.frame import resolve_frame
    from cryoorient.maps.refine import refine
    from cryoorient.imaging.simulate import load_volume

    _, pixel = load_volume(args.map)
    q_true = test.quats.double().cpu()
    frame = resolve_frame(test.images, q_rec, seed=args.seed, device=device)
    q0 = frame.quaternions.double().cpu()
    t0 = time.perf_counter()
    res = refine(test.images, q0, rounds=args.refine_rounds, pixel_size=pixel, seed=args.seed, device=device,
                 progress=not args.quiet)
    seconds = time.perf_counter() - t0
    truth = refine(test.images, q_true, rounds=0, pixel_size=pixel, seed=args.seed, device=device, progress=False)
    after = align_orientations(q_true, res.quaternions)
    return {"refine_E_OR_start": align_orientations(q_true, q0).error, "refine_E_OR": after.error,
            "refine_mirrored": after.reflected, "refine_res_A": res.resolution, "refine_res_true_A": truth.resolution,
            "refine_res_ratio": res.resolution / truth.resolution, "refine_seconds": seconds,
            "refine_res_per_round_A": [r.resolution for r in res.rounds], "refine_rounds_kept": res.kept,
            "refine_size": int(test.images.shape[-1]), "refine_pixel_A": float(pixel)}


def evaluate_abinitio(args, test, device) -> dict:
    """E_OR of :func:`cryoorient.orientations.abinitio.estimate_orientations` on the test projections (nothing
    trained), then ``--reconstruct`` / ``--refine`` as for the network."""
    from cryoorient.orientations.abinitio import estimate_orientations
    from cryoorient.orientations.align import align_orientations

    res = estimate_orientations(test.images, neighbors=args.neighbors, centre=False, seed=args.seed,
                                device=device, progress=not args.quiet)  # centred, CTF-free projections
    alignment = align_orientations(test.quats.double().cpu(), res.quaternions)
    row = {"protocol": args.protocol, "arch": "abinitio", "E_OR": alignment.error, "E_OR_deg": alignment.error_deg,
           "E_OR_median": float(alignment.errors.median()), "abinitio_seconds": res.seconds,
           "eigenvalues": res.eigenvalues.tolist(), "frame_residual": res.frame_residual,
           "target": PROTOCOLS[args.protocol]["target"]}
    if args.reconstruct:
        row.update(reconstruction(args, res.quaternions, test, device))
    if args.refine:
        row.update(refinement(args, res.quaternions, test, device))
    return row


def euclidean_model(train, args):
    """The Appendix E baseline fitted (isotonic) on 20,000 uniform-distance training pairs, with
    the SNN's ``features``/``distance`` interface."""
    from cryoorient.learning.model import EuclideanBaseline
    from cryoorient.learning.sources import evaluation_pairs

    base = EuclideanBaseline()
    i, j, d = evaluation_pairs(train, 20000, seed=args.seed + 5)
    f = base.features(train.images)
    base.fit(f[i], f[j], d, kind="isotonic")
    return base


def run_protocol(args, workdir: Path, device) -> list[dict]:
    from cryoorient.imaging.simulate import load_volume
    from cryoorient.imaging.render import particle_radius_of_gyration
    from cryoorient.learning.library import structure_library
    from cryoorient.learning.trainer import TrainConfig, Trainer

    data, tr, va, te, settings = dataset(args, workdir, device)
    test, val = data.subset(te), data.subset(va)
    if args.estimator == "abinitio":
        return [evaluate_abinitio(args, test, device)]
    rows = []
    for arch in args.arch:
        source = "structures" if args.protocol == "unseen" else args.train_source
        run_dir = workdir / f"{arch}-{source}"
        if args.protocol == "unseen":
            # Validation (early stopping, model choice) on the training proteins only: 5j0n is never seen;
            # only its size in pixels is measured, on the mean test image (the particle diameter any
            # cryo-EM processing starts from). Symmetric models are left out (their d_q targets are wrong).
            models, symmetric = structure_library(args.structures)
            rg = args.particle_rg or [round(particle_radius_of_gyration(test.images), 2)]
            print(f"unseen: {len(models)} models at Rg {rg} px; left out (symmetric): "
                  f"{', '.join(m.name for m in symmetric) or 'none'}")
            _, map_px = load_volume(args.map)
            train = fly_source(args, models, settings, device, args.pixel_size or map_px, particle_rg=rg)
            val = train.render_fixed(2048, seed=args.seed + 1_000_003)
        elif args.train_source == "fly":
            train = fly_source(args, [args.map], settings, device)
        else:
            train = data.subset(tr)
        config = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                             lr=args.lr, patience=args.patience, val_pairs=args.val_pairs, amp=args.amp,
                             compile=args.compile, seed=args.seed, progress=not args.quiet,
                             max_distance=args.max_distance)
        torch.manual_seed(args.seed)
        trainer = Trainer(new_model(args, arch), train, val, config, out_dir=run_dir, device=device)
        t0 = time.perf_counter()
        summary = trainer.fit()
        train_seconds = time.perf_counter() - t0
        row = {"protocol": args.protocol, "arch": arch, "train_source": source, "epochs": summary["epochs_run"],
               "val_loss": summary["best_val_loss"], "euclid_val_loss": summary["euclidean_isotonic_val_loss"],
               "train_seconds": train_seconds, "images_per_s": summary["images_per_s"],
               "pairs_per_s": summary["pairs_per_s"], "target": PROTOCOLS[args.protocol]["target"]}
        if args.protocol == "unseen":
            row.update(models=len(models), particle_rg=rg)
        row.update(evaluate(args, trainer.model, test, run_dir, device, arch))
        rows.append(row)
    if args.baseline:
        base = euclidean_model(data.subset(tr), args)
        row = {"protocol": args.protocol, "arch": "euclidean", "train_source": "dataset",
               "target": PROTOCOLS[args.protocol]["target"]}
        row.update(evaluate(args, base, test, workdir, device, "euclidean"))
        rows.append(row)
    return rows


def run_throughput(args, workdir: Path, device) -> list[dict]:
    """Steady-state training speed with on-the-fly simulation (CTF + noise + shifts) at --size:
    the second of two epochs of --throughput-steps steps (the first absorbs cuDNN autotuning and
    compilation). pairs/s counts every in-batch pair in the loss (B(B−1)/2 per step);
    anchor_pairs/s only the B/2 anchor–partner pairs."""
    from cryoorient.learning.trainer import TrainConfig, Trainer

    settings = simulation_settings(args, 1)
    source = fly_source(args, [args.map], settings, device)
    val = source.render_fixed(256, seed=1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    source.sample(args.batch_size, gen)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.throughput_steps):
        source.sample(args.batch_size, gen)
    sync()
    render_ms = 1e3 * (time.perf_counter() - t0) / args.throughput_steps
    rows = []
    for arch in args.arch:
        config = TrainConfig(epochs=2, steps_per_epoch=args.throughput_steps, batch_size=args.batch_size,
                             amp=args.amp, compile=args.compile, val_pairs=256, patience=2,
                             progress=not args.quiet)
        trainer = Trainer(new_model(args, arch), source, val, config, out_dir=workdir / arch, device=device)
        trainer.fit()
        last = trainer.history[-1]
        ms = 1e3 * last["seconds"] / args.throughput_steps
        rows.append({"protocol": "throughput", "arch": arch, "batch_size": args.batch_size, "size": args.size,
                     "images_per_s": last["images_per_s"], "pairs_per_s": last["pairs_per_s"],
                     "anchor_pairs_per_s": last["images_per_s"] / 2, "ms_per_step": ms,
                     "render_ms_per_step": render_ms, "compile": args.compile, "target": 20000})
    return rows


def print_table(rows: list[dict]) -> None:
    keys = [k for k in ("protocol", "arch", "train_source", "epochs", "val_loss", "euclid_val_loss", "test_loss",
                        "test_loss_capped",
                        "E_OR", "E_OR_deg", "E_OR_median", "target", "train_seconds", "abinitio_seconds", "images_per_s", "pairs_per_s",
                        "anchor_pairs_per_s", "ms_per_step", "render_ms_per_step", "frame_ncc", "fsc05_A",
                        "fsc0143_A", "fsc05_true_A", "nyquist_A", "refine_E_OR_start", "refine_E_OR",
                        "refine_res_A", "refine_res_true_A", "refine_res_ratio", "refine_seconds")
            if any(k in r for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [keys] + [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(keys))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("snn_paper: needs a CUDA GPU (pass --device cpu for a small smoke test); skipped")
        return 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    workdir = Path(args.workdir) if args.workdir else ROOT / "bench" / "out" / "snn_paper" / args.protocol
    workdir.mkdir(parents=True, exist_ok=True)
    rows = run_throughput(args, workdir, device) if args.protocol == "throughput" else run_protocol(args, workdir, device)
    for r in rows:
        r["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    (workdir / "results.json").write_text(json.dumps(rows, indent=2))
    print_table(rows)
    failed = [r for r in rows if r.get("target") is not None and r["arch"] != "euclidean" and (
        r.get("E_OR", -math.inf) > r["target"] if "E_OR" in r else r.get("pairs_per_s", math.inf) < r["target"])]
    if failed:
        print(f"{len(failed)} run(s) missed the target", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
