"""``cryoorient train``: takes maps (.mrc) or atomic models to project on the fly (--map, or every
asymmetric model of a folder with --structures), or a RELION STAR file with true angles (--dataset);
writes the best network (.pt) and LOG_DIR (checkpoint.pt, history.csv/.json, summary.json, loss.png,
distances.png; split.json for a dataset). Distances in radians, L_DE in rad². Runs under torchrun
(data parallel; rank 0 writes)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from .. import distributed
from ._common import add_run_flags, refuse_existing

HELP = "train the Siamese distance estimator (paper §2.2)"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--map", nargs="+", metavar="MAP", help="map(s) (.mrc) or atomic model(s) to project on the fly")
    src.add_argument("--structures", metavar="DIR", help="project every asymmetric .cif/.pdb in DIR on the fly "
                     "(needs --size and --pixel-size or --particle-rg)")
    src.add_argument("--dataset", metavar="STAR", help="RELION particle STAR file with images and true angles")
    p.add_argument("-o", "--output", required=True, help="trained network (.pt): the best epoch's weights")
    p.add_argument("--log-dir", help="checkpoint, logs and plots (default: OUTPUT without .pt + '_train')")
    p.add_argument("--arch", choices=("paper", "resnet"), default="paper", help="feature extractor (default: paper)")
    p.add_argument("--widths", type=int, nargs="+", help="channels per layer (paper) or stage (resnet)")
    p.add_argument("--depths", type=int, nargs="+", help="resnet: residual blocks per stage")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over a dataset, 100 on the fly")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default: 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--patience", type=int, default=10, help="early stopping patience in epochs (default: 10)")
    p.add_argument("--max-distance", type=float, metavar="RAD",
                   help="train on min(d_q, RAD): short distances only, for a cut-off recovery (default: all)")
    p.add_argument("--val-pairs", type=int, default=4096, help="fixed validation pairs (default: 4096)")
    p.add_argument("--val-images", type=int, default=1024, help="on the fly: images in the fixed validation set")
    p.add_argument("--split", type=float, nargs=2, default=(0.5, 0.17), metavar=("TRAIN", "VAL"),
                   help="dataset: training and validation fractions; the rest is the test set (default: 0.5 0.17)")
    p.add_argument("--symmetry", default="C1", help="point group of the protein for the targets (default: C1)")
    img = p.add_argument_group("on-the-fly images (as cryoorient simulate)")
    img.add_argument("--size", type=int, help="image edge in pixels (default: the map's)")
    img.add_argument("--pixel-size", type=float, help="Å per pixel (required for atomic models)")
    img.add_argument("--resolution", type=float, help="Å, for maps made from atomic models (default: 2·pixel size)")
    img.add_argument("--particle-rg", type=float, nargs="+", metavar="PX",
                     help="--structures: render each model at the pixel size giving it this radius of gyration in "
                          "pixels (several values: one map per value); default: every model at --pixel-size")
    img.add_argument("--maps-per-batch", type=int, help="maps sharing each training batch (default: all, up to 4)")
    noise = img.add_mutually_exclusive_group()
    noise.add_argument("--sigma2", type=float, help="white-noise variance after standardisation (paper: 16)")
    noise.add_argument("--snr", type=float, help="signal-to-noise ratio in dB instead of --sigma2")
    img.add_argument("--ctf", action="store_true", help="apply a CTF")
    img.add_argument("--defocus", type=float, nargs=2, default=(10000.0, 25000.0), metavar=("MIN", "MAX"),
                     help="defocus range in Å (default: 10000 25000)")
    img.add_argument("--voltage", type=float, default=300.0, help="kV (default: 300)")
    img.add_argument("--shift-max", type=float, default=0.0, help="largest shift in pixels (default: 0)")
    img.add_argument("--shift-distribution", default="triangular", help="triangular, uniform or gaussian")
    run = p.add_argument_group("run")
    run.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto")
    run.add_argument("--compile", action="store_true", help="torch.compile the feature extractor")
    run.add_argument("--resume", action="store_true", help="continue from LOG_DIR/checkpoint.pt")
    add_run_flags(run, "overwrite an existing OUTPUT and LOG_DIR", seed=True)


def main(args: argparse.Namespace) -> int:
    run_training(args)
    return 0


def run_training(args: argparse.Namespace) -> dict:
    """Run ``cryoorient train`` from parsed arguments; returns the training summary
    (``Trainer.fit``). Under ``torchrun`` every process runs this (data parallel, see
    ``learning.trainer``)."""
    return distributed.run(lambda device: _train(args, device), distributed.device_option(args.device))


def _train(args: argparse.Namespace, device: torch.device) -> dict:
    from ..learning.model import SiameseNet
    from ..learning.trainer import TrainConfig, Trainer

    output = Path(args.output)
    log_dir = Path(args.log_dir) if args.log_dir else output.with_name(output.stem + "_train")
    _prepare_outputs(args, output, log_dir)
    symmetry = None if args.symmetry.strip().upper() == "C1" else args.symmetry
    if args.dataset:
        train, val, metadata = _dataset_sources(args, symmetry, device, log_dir)
    else:
        train, val, metadata = _on_the_fly_sources(args, symmetry, device)
    config = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, patience=args.patience, val_pairs=args.val_pairs, amp=args.amp,
        compile=args.compile, seed=args.seed, progress=not args.quiet, max_distance=args.max_distance,
    )
    torch.manual_seed(args.seed)
    net = SiameseNet(args.arch, widths=tuple(args.widths or ()), depths=tuple(args.depths or ()))
    trainer = Trainer(net, train, val, config, out_dir=log_dir, device=device,
                      model_path=output, metadata=metadata)
    if args.resume:
        trainer.load_checkpoint(log_dir / "checkpoint.pt")
    summary = trainer.fit()
    if distributed.rank() == 0:
        print(f"best validation L_DE {summary['best_val_loss']:.4f} rad² at epoch {summary['best_epoch']} "
              f"(untrained {summary['untrained_val_loss']:.4f}, Euclidean baseline "
              f"{summary['euclidean_isotonic_val_loss']:.4f}); network: {output}; logs: {log_dir}")
    return summary


def _prepare_outputs(args: argparse.Namespace, output: Path, log_dir: Path) -> None:
    """Refuse absurd --size and outputs that are inputs; without --resume, refuse an existing OUTPUT or
    LOG_DIR unless --force (then rank 0 removes OUTPUT and LOG_DIR, the latter only if cryoorient wrote
    it: ``io.make_output_dir``) and create LOG_DIR; with --resume, require LOG_DIR/checkpoint.pt."""
    from ..imaging.simulate import SimulationSettings, simulation_bytes
    from ..io import check_output_dir, make_output_dir, require_resources

    if args.resume and args.force:
        raise ValueError("--resume and --force exclude each other")
    if args.size and not args.dataset:
        need = simulation_bytes(SimulationSettings(n=args.val_images, size=args.size, chunk_size=args.batch_size),
                                args.size)[1]
        require_resources(log_dir, memory=need, what=f"rendering {args.size}×{args.size} px images on the fly")
    inputs = [Path(p) for p in (args.map or [args.structures or args.dataset])]
    if not args.resume and log_dir.exists() and not args.force:
        raise FileExistsError(f"{log_dir} exists; pass --force to start over or --resume to continue")
    refuse_existing(output, args.force or args.resume, inputs)
    if args.resume:
        if not (log_dir / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"nothing to resume: {log_dir / 'checkpoint.pt'} does not exist")
        return
    check_output_dir(log_dir, force=args.force, inputs=inputs, flag="--log-dir")
    distributed.barrier()  # every rank has looked before rank 0 removes
    if distributed.rank() == 0:
        output.unlink(missing_ok=True)
        make_output_dir(log_dir, force=args.force, inputs=inputs, flag="--log-dir")
    distributed.barrier()


def _dataset_sources(args: argparse.Namespace, symmetry, device, log_dir: Path):
    """Training and validation splits of --dataset (LOG_DIR/split.json records the indices), metadata."""
    from ..learning.pairs import split_indices
    from ..learning.sources import DatasetSource
    from ..learning.trainer import write_json

    data = DatasetSource.from_star(args.dataset, symmetry=symmetry, device=device, pixel_size=args.pixel_size)
    train_frac, val_frac = args.split
    split = split_indices(len(data), (train_frac, val_frac, max(0.0, 1.0 - train_frac - val_frac)), seed=args.seed)
    if distributed.rank() == 0:
        log_dir.mkdir(parents=True, exist_ok=True)
        write_json(log_dir / "split.json", {k: v.tolist() for k, v in split.items()})
    metadata = dict(dataset=str(Path(args.dataset).absolute()), split=list(args.split))
    return data.subset(split["train"]), data.subset(split["val"]), metadata


def _on_the_fly_sources(args: argparse.Namespace, symmetry, device):
    """Renderers of --map or --structures, the fixed validation set rendered from them, metadata."""
    from ..imaging.render import ProjectionRenderer
    from ..imaging.simulate import SimulationSettings
    from ..learning.library import structure_library
    from ..learning.sources import OnTheFlySource

    if args.structures:
        sources, symmetric = structure_library(args.structures)
        if symmetric:
            print(f"leaving out symmetric models: {', '.join(p.name for p in symmetric)}")
    else:
        sources = [Path(m) for m in args.map]
        if args.particle_rg:
            raise ValueError("--particle-rg applies to --structures (atomic models) only")
    settings = SimulationSettings(
        n=1, size=args.size, shift_max=args.shift_max, shift_distribution=args.shift_distribution, ctf=args.ctf,
        defocus_min=args.defocus[0], defocus_max=args.defocus[1], voltage=args.voltage, snr_db=args.snr,
        sigma2=args.sigma2, seed=args.seed,
    )
    renderers = ProjectionRenderer.from_sources(sources, settings, device, args.pixel_size, args.resolution,
                                                particle_rg=args.particle_rg or ())
    train = OnTheFlySource(renderers, symmetry=symmetry, maps_per_batch=args.maps_per_batch, device=device)
    val = train.render_fixed(args.val_images, seed=args.seed + 1_000_003)
    metadata = dict(sources=[str(s) for s in sources], simulation=asdict(settings),
                    particle_rg=list(args.particle_rg or ()))
    return train, val, metadata
