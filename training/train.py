"""`train`: fit each ensemble member on the feature store.

Every member trains with AdamW and a OneCycle or cosine schedule, a class-weighted loss (or a
class-balanced sampler) from the TRAIN label ratio, random windows of at most `window` frames of
each training view, and early stopping on the validation ROC-AUC. Validation scores a video as the
mean fake probability of its windows (one window when it is no longer than `window`).

A run directory holds `run.json` (the run's settings), `log.jsonl` (one line per member epoch),
`members/<name>.safetensors` + `members/<name>.json` (best weights and their metadata) and
`curves/<name>.png`. A member whose metadata is already there is skipped (resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import track
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.nn import functional as F

from models.heads import FAKE, SequenceClassifier, build_member, pad_sequences
from models.spec import MemberSpec
from training.augment import stable_seed
from training.features import FeatureStore, FeatureStoreError, SpecMismatch, StoreEntry, dump_json
from training.plots import plot_training_curves

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
MEMBERS_DIR = "members"
CURVES_DIR = "curves"
_MEMBER_NAME = re.compile(r"^(lstm|gru)(\d+)$")

MEMBER_BASE = MemberSpec(
    name="base", kind="lstm", hidden_size=1, input_norm="standardize", input_dropout=0.5
)
"""Hyperparameters of members named on the command line (`--members lstm768,...`).

Backbone features are not centred and, with thousands of dimensions, saturate the recurrent gates
of small members unless standardised; input dropout keeps members from memorising a few hundred
videos through a handful of feature dimensions."""


class TrainConfig(BaseModel):
    """Settings of one training run (saved as `run.json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: tuple[MemberSpec, ...]
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    balance: Literal["loss", "sampler"] = "loss"
    window: int = Field(64, ge=1)
    stride: int = Field(32, ge=1)
    patience: int = Field(8, ge=1)
    seed: int = 0
    threads: int = Field(0, ge=0)


@dataclass(frozen=True)
class Sample:
    """One sequence of the store: `[T, D]` features and the class index (1 = fake)."""

    features: Tensor
    target: int


def load_samples(store: FeatureStore, entries: Sequence[StoreEntry]) -> list[Sample]:
    """The features and targets of `entries`."""
    return [Sample(store.features(e), e.target) for e in entries]


def parse_members(text: str, base: MemberSpec = MEMBER_BASE) -> tuple[MemberSpec, ...]:
    """Members named like `lstm768,gru512`: kind and per-direction hidden size from the name.

    The other hyperparameters come from `base`.
    """
    members = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        match = _MEMBER_NAME.match(name)
        if match is None:
            raise ValueError(f"member {name!r}: expected <lstm|gru><hidden size>, e.g. lstm768")
        extra = base.model_dump(exclude={"name", "kind", "hidden_size"})
        kind = "lstm" if match.group(1) == "lstm" else "gru"
        members.append(MemberSpec(name=name, kind=kind, hidden_size=int(match.group(2)), **extra))
    if not members:
        raise ValueError("no members given")
    return tuple(members)


def feature_statistics(samples: Sequence[Sample]) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std over every frame of `samples` (the std floored at 1% of its mean,
    so constant features stay finite after standardisation)."""
    frames = torch.cat([s.features for s in samples]).double()
    mean, std = frames.mean(dim=0), frames.std(dim=0, correction=0)
    floor = max(float(std.mean()) * 1e-2, 1e-12)
    return mean.float(), std.clamp_min(floor).float()


def class_weights(targets: Sequence[int]) -> Tensor:
    """Inverse-frequency weights of classes 0 and 1, `n / (2 * count)` (both classes needed)."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=2)[:2]
    if (counts == 0).any():
        raise ValueError(f"both classes are needed for training, got counts {counts.tolist()}")
    return torch.tensor(len(targets) / (2.0 * counts), dtype=torch.float32)


def windows(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """`(start, end)` windows of `window` frames every `stride` frames covering `[0, length)`.

    One window `(0, length)` when `length <= window`; otherwise the last window ends at `length`.
    """
    if length < 1 or window < 1 or stride < 1:
        raise ValueError("length, window and stride must be positive")
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return [(start, start + window) for start in starts]


def random_window(length: int, window: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random `(start, end)` slice of at most `window` frames (the whole sequence if shorter)."""
    if length <= window:
        return (0, length)
    start = int(rng.integers(0, length - window + 1))
    return (start, start + window)


def window_logits(
    member: SequenceClassifier,
    sequences: Sequence[Tensor],
    window: int,
    stride: int,
    batch_size: int = 64,
) -> list[Tensor]:
    """Eval-mode logits `[n_windows, 2]` of every window of each `[T, D]` sequence."""
    pieces = [
        (index, seq[start:end])
        for index, seq in enumerate(sequences)
        for start, end in windows(len(seq), window, stride)
    ]
    outputs: list[list[Tensor]] = [[] for _ in sequences]
    member.eval()
    with torch.inference_mode():
        for offset in range(0, len(pieces), batch_size):
            batch = pieces[offset : offset + batch_size]
            x, mask = pad_sequences([seq for _, seq in batch])
            logits, _ = member(x, mask)
            for (index, _), row in zip(batch, logits, strict=True):
                outputs[index].append(row)
    return [torch.stack(rows) for rows in outputs]


def aggregate_probabilities(logits: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """Per-video fake probability: mean over windows of `softmax(logits / temperature)[FAKE]`."""
    return torch.stack([torch.softmax(w / temperature, dim=1)[:, FAKE].mean() for w in logits])


def roc_auc(targets: Sequence[int], scores: Sequence[float] | Tensor) -> float:
    """ROC-AUC, or NaN when only one class is present."""
    if len(set(targets)) < 2:
        return math.nan
    return float(roc_auc_score(np.asarray(targets), np.asarray(scores, dtype=np.float64)))


class EarlyStopping:
    """Track the best score (higher is better); stop after `patience` epochs without improving."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_score = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record an epoch's score; True when it is a new best. NaN never improves."""
        if not math.isnan(score) and score > self.best_score + self.min_delta:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def epoch_order(targets: Sequence[int], balance: str, rng: np.random.Generator) -> np.ndarray:
    """Sample order of one epoch: a permutation, or class-balanced draws with replacement."""
    count = len(targets)
    if balance == "loss":
        return rng.permutation(count)
    weights = class_weights(targets).numpy()[np.asarray(targets)]
    return rng.choice(count, size=count, replace=True, p=weights / weights.sum())


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of `order`; a last batch of one sample joins the previous batch
    (BatchNorm needs two samples in training mode)."""
    parts = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [np.concatenate(parts[-2:])]
    return parts


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """OneCycle (warm-up then cosine annealing) or plain cosine annealing over all steps."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


@dataclass(frozen=True)
class MemberResult:
    """The best weights of a member and its training history."""

    state: dict[str, Tensor]
    best_epoch: int
    best_val_auc: float
    history: list[dict[str, float]]


def train_member(
    spec: MemberSpec,
    train: Sequence[Sample],
    val: Sequence[Sample],
    config: TrainConfig,
    on_epoch: Callable[[dict[str, float]], None] = lambda record: None,
) -> MemberResult:
    """Train one member; returns the weights of its best validation-AUC epoch."""
    seed = stable_seed(config.seed, spec.name)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    input_dim = int(train[0].features.shape[1])
    member = build_member(spec, input_dim)
    if spec.input_norm == "standardize":
        member.set_input_statistics(*feature_statistics(train))
    targets = [s.target for s in train]
    weights = class_weights(targets) if config.balance == "loss" else None
    steps = len(batches(np.arange(len(train)), config.batch_size))
    optimizer = torch.optim.AdamW(
        member.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = make_scheduler(optimizer, config, steps)
    stopper = EarlyStopping(config.patience)
    best_state = _copy_state(member)
    history: list[dict[str, float]] = []
    val_targets = [s.target for s in val]
    for epoch in track(range(config.epochs), description=f"train {spec.name}"):
        member.train()
        total_loss = 0.0
        for batch in batches(epoch_order(targets, config.balance, rng), config.batch_size):
            crops = []
            for i in batch:
                start, end = random_window(len(train[i].features), config.window, rng)
                crops.append(train[i].features[start:end])
            x, mask = pad_sequences(crops)
            labels = torch.tensor([train[i].target for i in batch])
            logits, _ = member(x, mask)
            loss = F.cross_entropy(logits, labels, weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(member.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(batch)
        logits = window_logits(member, [s.features for s in val], config.window, config.stride)
        probabilities = aggregate_probabilities(logits)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / len(train),
            "val_loss": _video_nll(probabilities, val_targets),
            "val_auc": roc_auc(val_targets, probabilities),
            "lr": float(scheduler.get_last_lr()[0]),
        }
        history.append(record)
        on_epoch(record)
        if stopper.update(record["val_auc"], epoch):
            best_state = _copy_state(member)
        if stopper.should_stop:
            logger.info(
                "%s: early stop at epoch %d (best %d)", spec.name, epoch, stopper.best_epoch
            )
            break
    return MemberResult(best_state, stopper.best_epoch, stopper.best_score, history)


def _video_nll(probabilities: Tensor, targets: Sequence[int]) -> float:
    p = probabilities.double().clamp(1e-7, 1 - 1e-7)
    y = torch.tensor(targets, dtype=torch.float64)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def _copy_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def member_files(run: Path, name: str) -> tuple[Path, Path]:
    """The weights and metadata files of a member in a run directory."""
    return run / MEMBERS_DIR / f"{name}.safetensors", run / MEMBERS_DIR / f"{name}.json"


def load_member(run: Path, name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The metadata and weights of a trained member."""
    weights, meta = member_files(run, name)
    if not meta.is_file() or not weights.is_file():
        raise FeatureStoreError(f"member {name} is not trained in {run}")
    return json.loads(meta.read_text(encoding="utf-8")), load_file(str(weights))


def read_config(run: Path) -> TrainConfig:
    """The settings of a run directory."""
    file = run / RUN_FILE
    if not file.is_file():
        raise FeatureStoreError(f"no training run at {run} ({RUN_FILE} missing)")
    return TrainConfig.model_validate(json.loads(file.read_text(encoding="utf-8"))["config"])


def train_run(store: FeatureStore, run: Path, config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Train every member not yet finished in `run`; returns each member's metadata."""
    if config.threads:
        torch.set_num_threads(config.threads)
    _start_run(store, run, config)
    train = load_samples(store, store.select("train"))
    val = load_samples(store, store.select("val", clean_only=True))
    if not train or len({s.target for s in val}) < 2:
        raise FeatureStoreError("training needs TRAIN views and VAL videos of both labels")
    results = {}
    for spec in config.members:
        weights_file, meta_file = member_files(run, spec.name)
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if MemberSpec.model_validate(meta["member"]) != spec:
                raise SpecMismatch(f"{meta_file} was trained with another spec than {spec}")
            logger.info("member %s already trained; skipped", spec.name)
            results[spec.name] = meta
            continue

        def log(record: dict[str, float], name: str = spec.name) -> None:
            with (run / LOG_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"member": name, **record}) + "\n")

        result = train_member(spec, train, val, config, on_epoch=log)
        meta = {
            "member": spec.model_dump(mode="json"),
            "input_dim": int(train[0].features.shape[1]),
            "store_spec_hash": store.spec_hash,
            "best_epoch": result.best_epoch,
            "best_val_auc": result.best_val_auc,
            "epochs_run": len(result.history),
            "history": result.history,
        }
        weights_file.parent.mkdir(parents=True, exist_ok=True)
        save_file(result.state, str(weights_file))
        plot_training_curves(result.history, run / CURVES_DIR / f"{spec.name}.png", spec.name)
        dump_json(meta_file, meta)
        results[spec.name] = meta
    return results


def _start_run(store: FeatureStore, run: Path, config: TrainConfig) -> None:
    """Write `run.json`, or check that an existing run used the same store."""
    file = run / RUN_FILE
    if file.is_file():
        previous = json.loads(file.read_text(encoding="utf-8"))
        if previous["store_spec_hash"] != store.spec_hash:
            raise SpecMismatch(
                f"{run} was trained on features {previous['store_spec_hash']}, "
                f"not on this store's {store.spec_hash}"
            )
    run.mkdir(parents=True, exist_ok=True)
    document = {
        "store": str(store.root.absolute()),
        "store_spec_hash": store.spec_hash,
        "config": config.model_dump(mode="json"),
    }
    dump_json(file, document)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `train` subcommand."""
    parser = subparsers.add_parser("train", help="train the ensemble members on a feature store")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    members = parser.add_mutually_exclusive_group()
    members.add_argument("--members", default="lstm768,lstm512,gru768")
    members.add_argument("--member-spec", type=Path, help="JSON file: a list of MemberSpec objects")
    parser.add_argument(
        "--temporal-change",
        action="store_true",
        help="members of --members also read each frame's absolute change from the previous one",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle")
    parser.add_argument("--balance", choices=["loss", "sampler"], default="loss")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed `train` arguments."""
    if args.member_spec is not None:
        raw = json.loads(args.member_spec.read_text(encoding="utf-8"))
        members = tuple(MemberSpec.model_validate(m) for m in raw)
    else:
        base = MEMBER_BASE.model_copy(update={"temporal_change": args.temporal_change})
        members = parse_members(args.members, base)
    return TrainConfig(
        members=members,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        balance=args.balance,
        window=args.window,
        stride=args.stride,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    """Run `train` from parsed arguments; prints one JSON line per member."""
    results = train_run(FeatureStore.open(args.store), args.out, config_from_args(args))
    for name, meta in results.items():
        print(
            json.dumps(
                {
                    "member": name,
                    "best_epoch": meta["best_epoch"],
                    "best_val_auc": meta["best_val_auc"],
                    "epochs_run": meta["epochs_run"],
                }
            )
        )
    return 0
