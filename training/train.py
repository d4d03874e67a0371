"""`train`: fit each ensemble member on the feature store.

Every member trains with AdamW and a OneCycle or cosine schedule, a class-weighted loss (or a
class-balanced sampler) from the TRAIN label ratio, random windows of at most `window` frames of
each training view, and early stopping on the validation ROC-AUC. Validation scores a video as the
mean fake probability of its windows (one window when it is no longer than `window`).

As in torchvision's reference scripts, one epoch is `train_one_epoch` and validation is
`evaluate`; `train_member` loops over them and `train_run` writes the run directory
(`training.runs`). A member whose metadata is already there is skipped (resume).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track
from torch import Tensor, nn
from torch.nn import functional as F

from models.heads import SequenceClassifier, build_member, pad_sequences
from models.spec import MemberSpec
from training.augment import stable_seed
from training.features import FeatureStore, FeatureStoreError, SpecMismatch, StoreEntry
from training.plots import plot_training_curves
from training.runs import (
    CURVES_DIR,
    TrainConfig,
    append_log,
    member_files,
    save_member,
    start_run,
)
from training.scoring import (
    EarlyStopping,
    aggregate_probabilities,
    random_window,
    roc_auc,
    video_nll,
    window_logits,
)

logger = logging.getLogger(__name__)

_MEMBER_NAME = re.compile(r"^(lstm|gru)(\d+)$")

MEMBER_BASE = MemberSpec(
    name="base", kind="lstm", hidden_size=1, input_norm="standardize", input_dropout=0.5
)
"""Hyperparameters of members named on the command line (`--members lstm768,...`).

Backbone features are not centred and, with thousands of dimensions, saturate the recurrent gates
of small members unless standardised; input dropout keeps members from memorising a few hundred
videos through a handful of feature dimensions."""


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


def train_one_epoch(
    member: SequenceClassifier,
    train: Sequence[Sample],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    rng: np.random.Generator,
    weights: Tensor | None,
) -> float:
    """One pass over `train` in random windows; returns the mean training loss per sample."""
    member.train()
    targets = [s.target for s in train]
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
    return total_loss / len(train)


def evaluate(
    member: SequenceClassifier, val: Sequence[Sample], config: TrainConfig
) -> dict[str, float]:
    """Per-video validation loss and ROC-AUC (a video: the mean of its windows' probabilities)."""
    logits = window_logits(member, [s.features for s in val], config.window, config.stride)
    probabilities = aggregate_probabilities(logits)
    targets = [s.target for s in val]
    return {
        "val_loss": video_nll(probabilities, targets),
        "val_auc": roc_auc(targets, probabilities),
    }


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
    weights = class_weights([s.target for s in train]) if config.balance == "loss" else None
    steps = len(batches(np.arange(len(train)), config.batch_size))
    optimizer = torch.optim.AdamW(
        member.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = make_scheduler(optimizer, config, steps)
    stopper = EarlyStopping(config.patience)
    best_state = copy_state(member)
    history: list[dict[str, float]] = []
    for epoch in track(range(config.epochs), description=f"train {spec.name}"):
        train_loss = train_one_epoch(member, train, optimizer, scheduler, config, rng, weights)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            **evaluate(member, val, config),
            "lr": float(scheduler.get_last_lr()[0]),
        }
        history.append(record)
        on_epoch(record)
        if stopper.update(record["val_auc"], epoch):
            best_state = copy_state(member)
        if stopper.should_stop:
            logger.info(
                "%s: early stop at epoch %d (best %d)", spec.name, epoch, stopper.best_epoch
            )
            break
    return MemberResult(best_state, stopper.best_epoch, stopper.best_score, history)


def copy_state(module: nn.Module) -> dict[str, Tensor]:
    """A detached, contiguous copy of a module's state dict."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def train_run(store: FeatureStore, run: Path, config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Train every member not yet finished in `run`; returns each member's metadata."""
    if config.threads:
        torch.set_num_threads(config.threads)
    start_run(store, run, config)
    train = load_samples(store, store.select("train"))
    val = load_samples(store, store.select("val", clean_only=True))
    if not train or len({s.target for s in val}) < 2:
        raise FeatureStoreError("training needs TRAIN views and VAL videos of both labels")
    results = {}
    for spec in config.members:
        _, meta_file = member_files(run, spec.name)
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if MemberSpec.model_validate(meta["member"]) != spec:
                raise SpecMismatch(f"{meta_file} was trained with another spec than {spec}")
            logger.info("member %s already trained; skipped", spec.name)
            results[spec.name] = meta
            continue

        def log(record: dict[str, float], name: str = spec.name) -> None:
            append_log(run, {"member": name, **record})

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
        plot_training_curves(result.history, run / CURVES_DIR / f"{spec.name}.png", spec.name)
        save_member(run, spec.name, result.state, meta)
        results[spec.name] = meta
    return results
