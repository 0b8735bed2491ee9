"""Training of the Siamese distance estimator by L_DE (paper eq. 3, :mod:`.targets`).

How a training step sees pairs
-------------------------------
A batch holds ``B`` images from a source (:mod:`.sources`): ``B/2`` anchors and one partner per
anchor at a distance uniform on [0, π]. The network runs once on the ``B`` images and the loss
uses *all* ``B(B−1)/2`` in-batch pairs (same map only), each weighted by
``1 / (#non-empty bins · #pairs in its bin)`` over ``bins`` equal bins of d_q: the
stratified estimate of L_DE under a uniform distance distribution (:func:`.targets.binned_de_loss`).
Validation uses a fixed set of uniform-distance pairs and the plain mean, i.e. the paper's L_DE.

Several GPUs (``torchrun --nproc-per-node N -m cryoorient train ...``)
-----------------------------------------------------------------------
Data parallel with DistributedDataParallel, one process per GPU. The global batch stays
``batch_size`` images: each of the N ranks renders (or draws from a dataset) its
``batch_size/N`` share from its own stream ``(seed, step, rank)`` (:func:`.sources.batch_generator`),
so the shares never overlap. The features of all ranks are all-gathered with autograd and every
rank computes the loss over all ``B(B−1)/2`` pairs of the union batch, so an N-rank step is the
one-process step on the union batch (to float rounding). The learning-rate schedule is
unchanged. Every rank validates the whole (small) validation set, so the logged numbers
are the one-process ones; rank 0 alone writes logs, the model and the checkpoint (then all
ranks meet at a barrier), and a checkpoint resumes on any number of processes.
BatchNorm layers become SyncBatchNorm on CUDA (on the CPU they keep per-rank statistics).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from .model import EuclideanBaseline, SiameseNet, _autocast_dtype, atomic_save, pairwise_feature_distance
from .plots import plot_distance_density, plot_history
from .sources import Batch, DatasetSource, batch_generator, evaluation_pairs
from .targets import binned_de_loss, pairwise_target_distance

__all__ = ["TrainConfig", "Trainer", "write_json"]

_CHECKPOINT_FORMAT = "cryoorient.train-checkpoint"


@dataclass
class TrainConfig:
    """Optimisation settings (Adam; linear warm-up then cosine decay to ``lr·min_lr_ratio``).

    batch_size: images per step (half anchors, half partners; the loss uses every
    in-batch pair), over all processes when data parallel. steps_per_epoch: None = one pass of the anchors over a dataset
    (``2·N/batch_size``), 100 for on-the-fly sources. Early stopping after ``patience``
    epochs without a validation improvement larger than ``min_delta``. amp: "auto"
    (bfloat16 on CUDA, float32 on CPU), "bf16", "fp16" (with gradient scaling) or "none".
    max_distance: radians; if set, the targets (training and validation) are
    ``min(d_q, max_distance)``: the network learns short distances and "far" for the rest,
    for a recovery that trusts only d̂ below a cut-off (``recover(..., cutoff=...)``).
    """

    epochs: int = 50
    steps_per_epoch: Optional[int] = None
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    bins: int = 32
    patience: int = 10
    min_delta: float = 1e-4
    val_pairs: int = 4096
    amp: str = "auto"
    compile: bool = False
    seed: int = 0
    progress: bool = True
    max_distance: Optional[float] = None

    def __post_init__(self) -> None:
        if self.max_distance is not None and not 0 < self.max_distance <= math.pi:
            raise ValueError(f"max_distance must be in (0, π] radians, got {self.max_distance}")
        for name in ("epochs", "batch_size", "bins", "patience", "val_pairs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 4:
            raise ValueError(f"batch_size must be >= 4, got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0, weight_decay >= 0")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'none', got {self.amp!r}")


_AMP = {"auto": True, "bf16": torch.bfloat16, "fp16": torch.float16, "none": False}


class _Embed(torch.nn.Module):
    """``model.embed`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model: SiameseNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.embed(images)


class Trainer:
    """Fits a :class:`SiameseNet` on a source; validates each epoch; keeps the best weights.

    Files in ``out_dir``: ``checkpoint.pt`` (last epoch, for exact resumption),
    ``history.csv`` / ``history.json`` (per epoch: losses, learning rate, throughput),
    ``summary.json``, ``loss.png`` and ``distances.png`` (d̂_p vs d_q density on the
    validation pairs, as the paper's Fig. 6b). The best network (lowest validation
    L_DE) goes to ``model_path`` (default ``out_dir/model.pt``) with its metadata.

    In an initialised torch.distributed process group (see the module docstring) each rank
    builds its Trainer with the same arguments on its own device; only rank 0 writes files.
    """

    def __init__(self, model: SiameseNet, train, val: DatasetSource, config: Optional[TrainConfig] = None,
                 out_dir=None, device=None, model_path=None, metadata: Optional[dict] = None):
        if not isinstance(val, DatasetSource):
            raise TypeError("val must be a DatasetSource (use OnTheFlySource.render_fixed for a fixed set)")
        config = config if config is not None else TrainConfig()
        self.config = config
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if self.world > 1 and config.batch_size % (2 * self.world):
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of 2 × {self.world} processes")
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
            if self.world > 1:
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if config.compile:
            self.model.compile()
        self._embed = self.model.embed
        if self.world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self._embed = torch.nn.parallel.DistributedDataParallel(_Embed(self.model), device_ids=ids)
        self.train_source, self.val = train, val
        self.symmetry = val.symmetry
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_path = Path(model_path) if model_path is not None else (
            self.out_dir / "model.pt" if self.out_dir is not None else None)
        self.metadata = dict(metadata or {})
        if config.max_distance is not None:
            self.metadata["max_distance"] = config.max_distance
        if config.steps_per_epoch is not None:
            self.steps_per_epoch = config.steps_per_epoch
        elif isinstance(train, DatasetSource):
            self.steps_per_epoch = max(1, math.ceil(2 * len(train) / config.batch_size))
        else:
            self.steps_per_epoch = 100
        self.total_steps = config.epochs * self.steps_per_epoch
        self.amp_dtype = _autocast_dtype(self.device, _AMP[config.amp])
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        vi, vj, vd = evaluation_pairs(val, config.val_pairs, seed=config.seed + 1)
        self.val_pairs = (vi, vj, self._target(vd))
        self.epoch = 0
        self.step = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.reference: dict = {}
        self._best_state: Optional[dict] = None

    # -- schedule ----------------------------------------------------------- #
    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        t = min(1.0, (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    # -- one step ----------------------------------------------------------- #
    def local_batch(self) -> Batch:
        """This rank's ``batch_size / world`` images of the current step (the whole batch in
        one process), drawn with ``batch_generator(seed, step, rank)``."""
        gen = batch_generator(self.config.seed, self.step, self.rank, self.device)
        return self.train_source.sample(self.config.batch_size // self.world, gen)

    def train_step(self, batch: Batch) -> tuple[Tensor, int]:
        """One optimiser step on ``batch`` (this rank's share: the loss runs over the union of
        the ranks' shares)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            f = self._embed(batch.images)
        if self.world > 1:
            f = distributed.all_gather_autograd(f)
            batch = Batch(batch.images, distributed.all_gather_rows(batch.quats),
                          distributed.all_gather_rows(batch.labels))
        d_p = pairwise_feature_distance(f.float())
        d_q = pairwise_target_distance(batch.quats, self.symmetry).to(d_p.dtype)
        n = batch.labels.shape[0]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=d_p.device), 1)
        mask &= batch.labels[:, None] == batch.labels[None, :]
        loss = binned_de_loss(d_p[mask], d_q[mask], self.config.bins, target=self._target(d_q[mask]))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss.detach(), mask.sum()

    def _target(self, d_q: Tensor) -> Tensor:
        """Training target for true distances d_q: d_q, or min(d_q, config.max_distance)."""
        cap = self.config.max_distance
        return d_q if cap is None else d_q.clamp(max=cap)

    # -- evaluation --------------------------------------------------------- #
    def predict_val(self) -> Tensor:
        """d̂_p of the fixed validation pairs with the current weights (radians)."""
        f = self.model.features(self.val.images, amp=self.amp_dtype or False)
        vi, vj, _ = self.val_pairs
        return self.model.distance(f[vi], f[vj])

    def validate(self) -> float:
        """Validation L_DE: mean squared error on the fixed uniform-distance pairs."""
        return float(((self.predict_val() - self.val_pairs[2].float()) ** 2).mean())

    def _reference_losses(self) -> dict:
        """Validation L_DE of the untrained network and of the Euclidean baseline (isotonic and
        linear calibration fitted on pairs from two training batches drawn with a side generator)."""
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        batches = [self.train_source.sample(self.config.batch_size, gen) for _ in range(2)]
        fit = DatasetSource(torch.cat([b.images for b in batches]), torch.cat([b.quats for b in batches]),
                            torch.cat([b.labels for b in batches]), self.symmetry)
        i, j, d = evaluation_pairs(fit, 4 * self.config.batch_size, seed=self.config.seed + 3)
        f = EuclideanBaseline.features(fit.images)
        vf = EuclideanBaseline.features(self.val.images)
        vi, vj, vd = self.val_pairs
        out = {"untrained_val_loss": self.validate()}
        for kind in ("isotonic", "linear"):
            base = EuclideanBaseline().fit(f[i], f[j], d, kind=kind)
            out[f"euclidean_{kind}_val_loss"] = float(((base.distance(vf[vi], vf[vj]) - vd.float()) ** 2).mean())
        return out

    # -- loop --------------------------------------------------------------- #
    def fit(self, stop_epoch: Optional[int] = None) -> dict:
        """Train until ``config.epochs``, early stopping, or ``stop_epoch`` (to split a run
        into sessions; the schedule still spans ``config.epochs``). Returns the summary."""
        c = self.config
        last = c.epochs if stop_epoch is None else min(c.epochs, stop_epoch)
        if not self.reference:
            self.reference = self._reference_losses()
        stopped = self.bad_epochs >= c.patience
        while self.epoch < last and not stopped:
            train_loss, pairs, seconds = self._train_epoch()
            self._end_epoch(train_loss, self.validate(), pairs, seconds)
            stopped = self.bad_epochs >= c.patience
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        summary = self.summary(stopped_early=stopped and self.epoch < c.epochs)
        self._write_results(summary)
        return summary

    def _train_epoch(self) -> tuple[float, float, float]:
        """``steps_per_epoch`` optimiser steps: mean training loss (binned L_DE, rad²), in-batch
        pairs seen and wall-clock seconds."""
        self.model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        pairs = torch.zeros((), dtype=torch.long, device=self.device)
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not self._progress, leave=False, dynamic_ncols=True)
        for k in bar:
            loss, n_pairs = self.train_step(self.local_batch())
            loss_sum += loss
            pairs += n_pairs
            if k % 10 == 9 or k == self.steps_per_epoch - 1:
                value = float(loss)
                if not math.isfinite(value):
                    raise RuntimeError(f"training loss became {value} at step {self.step}; lower the learning rate")
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        return float(loss_sum) / self.steps_per_epoch, float(pairs), seconds

    def _end_epoch(self, train_loss: float, val_loss: float, pairs: float, seconds: float) -> None:
        """Count the epoch, keep (and save) the weights if validation improved, log, checkpoint."""
        c = self.config
        self.epoch += 1
        improved = val_loss < self.best_loss - c.min_delta
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, self.epoch, 0
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._save_model()
        else:
            self.bad_epochs += 1
        self.history.append({
            "epoch": self.epoch, "step": self.step, "train_loss": train_loss, "val_loss": val_loss,
            "lr": self.scheduler.get_last_lr()[0], "seconds": seconds,
            "images_per_s": self.steps_per_epoch * c.batch_size / seconds,
            "pairs_per_s": pairs / seconds, "best": improved,
        })
        if self._progress:
            tqdm.write(f"epoch {self.epoch}: train L_DE {train_loss:.4f}  val L_DE {val_loss:.4f}"
                       f"{'  (best)' if improved else ''}  {self.history[-1]['pairs_per_s']:.0f} pairs/s")
        self._write_logs()
        if self.out_dir is not None:
            self.save_checkpoint(self.out_dir / "checkpoint.pt")

    def _write_results(self, summary: dict) -> None:
        """Rank 0: ``summary.json``, ``loss.png`` and ``distances.png`` (the best weights on the
        first 1,000 validation pairs) in ``out_dir``."""
        if self.out_dir is None or self.rank != 0:
            return
        write_json(self.out_dir / "summary.json", summary)
        plot_history(self.history, self.reference, self.out_dir / "loss.png")
        vi, vj, vd = self.val_pairs
        n = min(1000, vd.numel())
        plot_distance_density(vd[:n], self.predict_val()[:n], self.out_dir / "distances.png",
                              title=f"validation pairs, best epoch {self.best_epoch}")

    @property
    def _progress(self) -> bool:
        return self.config.progress and self.rank == 0

    def summary(self, stopped_early: bool = False) -> dict:
        last = self.history[-1] if self.history else {}
        return {
            "epochs_run": self.epoch, "steps": self.step, "best_epoch": self.best_epoch,
            "best_val_loss": self.best_loss, "stopped_early": stopped_early,
            "images_per_s": last.get("images_per_s"), "pairs_per_s": last.get("pairs_per_s"),
            **self.reference, "device": str(self.device), "processes": self.world,
            "model": self.model.config.to_dict(),
            "train": asdict(self.config), "model_path": str(self.model_path) if self.model_path else None,
        }

    # -- persistence -------------------------------------------------------- #
    def _save_model(self) -> None:
        if self.model_path is not None and self.rank == 0:
            metadata = {**self.metadata, **self.reference, "epoch": self.epoch, "val_loss": self.best_loss,
                        "symmetry": self.symmetry, "train": asdict(self.config)}
            self.model.save(self.model_path, overwrite=True, **metadata)

    def _write_logs(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "history.json", {"reference": self.reference, "epochs": self.history})
        tmp = self.out_dir / ".history.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.out_dir / "history.csv")

    def state_dict(self) -> dict:
        cuda_rng = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        return {
            "format": _CHECKPOINT_FORMAT, "version": 2,
            "model_config": self.model.config.to_dict(), "config": asdict(self.config),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng,
            "epoch": self.epoch, "step": self.step, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "history": self.history, "reference": self.reference,
            "best_state": self._best_state,
        }

    def save_checkpoint(self, path) -> None:
        """Everything needed to continue exactly: weights, optimiser, schedule, RNG states, counters.
        Written by rank 0 only; every rank returns once the file is complete."""
        if self.rank == 0:
            atomic_save(self.state_dict(), path)
        distributed.barrier()

    def load_checkpoint(self, path) -> None:
        """Restore a :meth:`save_checkpoint` file written with the same model and config (by any
        number of processes)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a cryoorient training checkpoint")
        if state["model_config"] != self.model.config.to_dict():
            raise ValueError(f"{path} was written for another architecture: {state['model_config']}")
        if state["config"] != asdict(self.config):
            diff = {k: (v, asdict(self.config).get(k)) for k, v in state["config"].items()
                    if asdict(self.config).get(k) != v}
            raise ValueError(f"{path} was written with other training settings (checkpoint, now): {diff}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"][0], self.device)
        for key in ("epoch", "step", "best_epoch", "bad_epochs", "history", "reference"):
            setattr(self, key, state[key])
        self.best_loss = state["best_loss"]
        self._best_state = state["best_state"]


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON in ``path`` (parents created), written to a temporary file and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
