"""`finetune`: train a backbone as a frame-level real/fake classifier on TRAIN face crops.

Fakes are self-blended images made on the fly from the real crops (`training.selfblend`), plus
the dataset's own fake crops when it has them (`dataset_fakes`). Every image then gets a random
horizontal flip and, with probability `jpeg_p`, a JPEG re-compression, so neither is a cue.
Validation scores each VAL video by the mean fake probability of its crops; the epoch with the
best VAL ROC-AUC gives the output weights. As in torchvision's reference scripts, one epoch is
`train_one_epoch` and validation is `evaluate`.

With `clip_frames` K >= 2 the objective is temporal: the classifier reads windows of K consecutive
sampled crops, through the backbone, as the mean of their features (with `clip_centred`: their
mean absolute departure from that mean, which no longer shows what the face looks like) and the
mean absolute change from one crop's features to the next (what `temporal_change` members read),
and a real window's self-blended twin shares one blend whose position, scale and colour jitter
from frame to frame (`training.selfblend.jittered`). The backbone learns features that move with
a pasted face but not with the face track. Validation then scores each VAL video's whole crop
sequence as one clip.

The output directory holds `backbone.safetensors` (the headless backbone of the best epoch, with
the finetune record in its metadata: what `extract --weights file:PATH` reads), `finetune.json`
(the record and the per-epoch history), `log.jsonl`, the crop caches `crops-{train,val}.safetensors`
(cut once per run) and `state.safetensors` + `state.json` (the last epoch, to resume).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from models.backbones import ComputeDtypeError, autocast_dtype, build_backbone, weights_digest
from models.spec import BackboneSpec, FaceSpec, SamplingSpec
from training.augment import jpeg_roundtrip, stable_seed
from training.crops import CropSet, cut_crops, load_crops, save_crops
from training.features import dump_json
from training.manifest import ManifestRow
from training.scoring import EarlyStopping, roc_auc, video_nll
from training.selfblend import BlendSpec, draw_blend, jittered, render_blend, self_blend
from training.train import batches, class_weights, copy_state

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "backbone.safetensors"
RECORD_FILE = "finetune.json"
LOG_FILE = "log.jsonl"
STATE_FILE = "state.safetensors"
PROGRESS_FILE = "state.json"
RECORD_KEY = "dfd_finetune"
"""Metadata key of the finetune record in the weights file (read by `finetune_record`)."""


class FinetuneConfig(BaseModel):
    """Settings of one fine-tuning run (saved in the record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: BackboneSpec = BackboneSpec(arch="resnet50", weights="imagenet", input_size=224)
    face: FaceSpec = FaceSpec(no_face="full_frame", box_smoothing_s=0.5)
    frames: int = Field(16, ge=1, description="uniform frames per TRAIN and VAL video")
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=2, description="crops per batch, before the blended twins")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(3, ge=1)
    seed: int = 0
    dataset_fakes: bool = True
    self_blend_p: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="chance of a self-blended twin per real crop (0: the dataset's fakes only)",
    )
    clip_frames: int = Field(
        0,
        ge=0,
        description="0: a frame classifier; K >= 2: a clip classifier over K consecutive sampled "
        "crops (mean features and mean frame-to-frame change)",
    )
    clip_centred: bool = Field(
        False,
        description="the clip classifier reads the crops' mean absolute departure from the clip's "
        "mean features instead of that mean (what members with centre_sequences read)",
    )
    blend: BlendSpec = BlendSpec()
    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    jpeg_p: float = Field(0.3, ge=0.0, le=1.0)
    jpeg_quality: tuple[int, int] = (40, 95)
    amp: Literal["auto", "bfloat16", "off"] = Field(
        "auto", description="bfloat16 autocast: 'auto' uses it where the device supports it"
    )
    threads: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check_clip(self) -> FinetuneConfig:
        if self.clip_frames == 1 or self.clip_frames > self.frames:
            raise ValueError(f"clip_frames must be 0 or 2..frames ({self.frames})")
        if self.clip_centred and not self.clip_frames:
            raise ValueError("clip_centred needs clip_frames")
        return self


class _BackboneClassifier(nn.Module):
    """A backbone with its input normalisation and a linear real/fake head of `inputs` features."""

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, inputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(inputs, 2)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def features(self, crops: Tensor) -> Tensor:
        """The backbone's features of `[N, 3, S, S]` uint8 crops."""
        return self.backbone((crops.float() / 255.0 - self.mean) / self.std)


class FrameClassifier(_BackboneClassifier):
    """A backbone and a linear real/fake head: `[N, 3, S, S]` uint8 crops -> `[N, 2]` logits."""

    def __init__(self, backbone: nn.Module, spec: BackboneSpec) -> None:
        super().__init__(backbone, spec, spec.feature_dim)

    def forward(self, crops: Tensor) -> Tensor:
        return self.head(self.features(crops))


class ClipClassifier(_BackboneClassifier):
    """A backbone and a linear real/fake head over a clip's mean features (`centred`: the mean
    absolute departure from them) and mean absolute frame-to-frame feature change:
    `[B, K, 3, S, S]` uint8 clips -> `[B, 2]` logits."""

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, centred: bool = False) -> None:
        super().__init__(backbone, spec, 2 * spec.feature_dim)
        self.norm = nn.LayerNorm(2 * spec.feature_dim)
        self.centred = centred

    def forward(self, clips: Tensor) -> Tensor:
        count, length = clips.shape[:2]
        features = self.features(clips.flatten(0, 1)).view(count, length, -1)
        mean = features.mean(dim=1)
        level = (features - mean[:, None]).abs().mean(dim=1) if self.centred else mean
        change = (features[:, 1:] - features[:, :-1]).abs().mean(dim=1)
        return self.head(self.norm(torch.cat([level, change], dim=1)))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the `amp` setting on `device` (None: full precision)."""
    if amp == "off":
        return None
    try:
        return autocast_dtype("bfloat16", device)
    except ComputeDtypeError:
        if amp == "bfloat16":
            raise
        return None


def training_batch(
    crops: CropSet,
    indices: np.ndarray,
    config: FinetuneConfig,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor]:
    """The images and targets of one step: the crops at `indices`, a self-blended twin of each
    real one (with chance `self_blend_p`), then flips and JPEG re-compression."""
    targets = crops.frame_targets()
    images, labels = [], []
    for index in indices.tolist():
        crop = crops.crops[index]
        images.append(crop)
        labels.append(int(targets[index]))
        if labels[-1] == 0 and _draws_twin(config.self_blend_p, rng):
            images.append(self_blend(crop, config.blend, rng).image)
            labels.append(1)
    out = [_augmented(image[None], config, rng)[0] for image in images]
    return torch.stack(out), torch.tensor(labels, dtype=torch.int64)


def clip_windows(crops: CropSet, length: int, rng: np.random.Generator) -> list[Tensor]:
    """Each video's crops cut into `len // length` windows of `length` consecutive crops, from a
    random offset (videos with fewer crops give none)."""
    windows = []
    for video in range(len(crops.paths)):
        indices = torch.nonzero(crops.video == video).flatten()
        count = len(indices) // length
        if count == 0:
            continue
        start = int(rng.integers(0, len(indices) - count * length + 1))
        windows += list(indices[start : start + count * length].view(count, length))
    return windows


def clip_batch(
    crops: CropSet, windows: Sequence[Tensor], config: FinetuneConfig, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """The clips and targets of one step: the windows' crops, a self-blended twin of each real
    window (one blend per clip, jittered per frame, with chance `self_blend_p`), then one flip
    and one JPEG re-compression per clip."""
    targets = crops.frame_targets()
    clips, labels = [], []
    for window in windows:
        clip = crops.crops[window]
        clips.append(clip)
        labels.append(int(targets[window[0]]))
        if labels[-1] == 0 and _draws_twin(config.self_blend_p, rng):
            clips.append(blended_clip(clip, config.blend, rng))
            labels.append(1)
    out = [_augmented(clip, config, rng) for clip in clips]
    return torch.stack(out), torch.tensor(labels, dtype=torch.int64)


def blended_clip(clip: Tensor, spec: BlendSpec, rng: np.random.Generator) -> Tensor:
    """A `[K, 3, S, S]` uint8 clip's self-blended twin: one blend, jittered per frame with a
    per-clip strength drawn from [0, 1]."""
    draw = draw_blend(int(clip.shape[-1]), spec, rng)
    strength = float(rng.uniform(0.0, 1.0))
    return torch.stack(
        [render_blend(crop, jittered(draw, strength, spec, rng)).image for crop in clip]
    )


def _augmented(images: Tensor, config: FinetuneConfig, rng: np.random.Generator) -> Tensor:
    """`[N, 3, S, S]` uint8 images (a crop or a clip), flipped and JPEG re-compressed together."""
    if rng.random() < config.flip_p:
        images = TF.horizontal_flip(images)
    if rng.random() < config.jpeg_p:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        images = jpeg_roundtrip(images, quality)
    return images


def epoch_batches(
    crops: CropSet, config: FinetuneConfig, rng: np.random.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch's training batches: single crops, or clips when `clip_frames` is set."""
    if config.clip_frames == 0:
        for indices in batches(rng.permutation(len(crops.crops)), config.batch_size):
            yield training_batch(crops, indices, config, rng)
        return
    windows = clip_windows(crops, config.clip_frames, rng)
    for chosen in batches(rng.permutation(len(windows)), _clips_per_batch(config)):
        yield clip_batch(crops, [windows[i] for i in chosen.tolist()], config, rng)


def _clips_per_batch(config: FinetuneConfig) -> int:
    return max(2, config.batch_size // config.clip_frames)


def _unit_targets(crops: CropSet, config: FinetuneConfig) -> list[int]:
    """The targets of an epoch's training units: every crop, or every clip window (`clip_windows`
    cuts `len // clip_frames` of them from each video)."""
    if config.clip_frames == 0:
        return crops.frame_targets().tolist()
    lengths = torch.bincount(crops.video, minlength=len(crops.paths)) // config.clip_frames
    return [
        t for t, count in zip(crops.targets, lengths.tolist(), strict=True) for _ in range(count)
    ]


def _draws_twin(chance: float, rng: np.random.Generator) -> bool:
    """Whether a real crop gets a self-blended twin (no draw at chance 1: runs made before the
    setting existed draw the same numbers)."""
    return chance == 1.0 or rng.random() < chance


def train_one_epoch(
    model: FrameClassifier | ClipClassifier,
    crops: CropSet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: FinetuneConfig,
    rng: np.random.Generator,
    weights: Tensor,
    device: torch.device,
) -> float:
    """One pass over the TRAIN crops or clips (each real one with a blended twin); the mean loss."""
    model.train()
    dtype = amp_dtype(config.amp, device)
    total, count = 0.0, 0
    for images, labels in epoch_batches(crops, config, rng):
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, weight=weights.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    return total / count


def evaluate(
    model: FrameClassifier | ClipClassifier,
    crops: CropSet,
    device: torch.device,
    batch_size: int = 128,
) -> dict[str, float]:
    """Per-video VAL loss and ROC-AUC; a video's score is the mean fake probability of its crops
    (a frame classifier) or that of its whole crop sequence as one clip (a clip classifier)."""
    model.eval()
    with torch.inference_mode():
        if isinstance(model, ClipClassifier):
            per_video = torch.tensor(
                [_clip_probability(model, crops, v, device) for v in range(len(crops.paths))]
            )
        else:
            frame = []
            for start in range(0, len(crops.crops), batch_size):
                logits = model(crops.crops[start : start + batch_size].to(device))
                frame.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
            probabilities = torch.cat(frame)
            per_video = torch.zeros(len(crops.paths)).index_add_(0, crops.video, probabilities)
            per_video /= torch.bincount(crops.video, minlength=len(crops.paths)).clamp_min(1)
    return {
        "val_loss": video_nll(per_video, crops.targets),
        "val_auc": roc_auc(crops.targets, per_video),
    }


def _clip_probability(
    model: ClipClassifier, crops: CropSet, video: int, device: torch.device
) -> float:
    clip = crops.crops[crops.video == video]
    if len(clip) < 2:  # no change to read: a repeated crop
        clip = clip.repeat(2, 1, 1, 1)
    logits = model(clip[None].to(device))
    return float(torch.softmax(logits.float(), dim=1)[0, 1])


def cached_crops(file: Path, rows: Sequence[ManifestRow], config: FinetuneConfig) -> CropSet:
    """The crops of `rows`, cut once and kept in `file` for later epochs and resumed runs."""
    if file.is_file():
        cached = load_crops(file)
        if not set(cached.paths) <= {r.path for r in rows}:
            raise ValueError(f"{file} holds crops of other videos; use another --out")
        return cached
    sampling = SamplingSpec(mode="uniform", num_frames=config.frames, max_frames=config.frames)
    crops = cut_crops(rows, config.face, config.backbone.input_size, sampling)
    save_crops(file, crops)
    return crops


def finetune(
    rows: Sequence[ManifestRow],
    out: Path,
    config: FinetuneConfig,
    *,
    device: str = "cpu",
    on_epoch: Callable[[dict[str, float]], None] = lambda record: None,
) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning) into `out`; returns the record of the best epoch."""
    if config.threads:
        torch.set_num_threads(config.threads)
    target = torch.device(device)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, config)
    train_rows = [
        r for r in rows if r.split == "train" and (r.label == "real" or config.dataset_fakes)
    ]
    val_rows = [r for r in rows if r.split == "val"]
    if not any(r.label == "real" for r in train_rows):
        raise ValueError("finetune needs real TRAIN videos (the self-blended fakes come from them)")
    if config.self_blend_p == 0 and not any(r.label == "fake" for r in train_rows):
        raise ValueError("without self-blended twins finetune needs the TRAIN split's fake videos")
    if {r.label for r in val_rows} != {"real", "fake"}:
        raise ValueError("finetune needs VAL videos of both labels to choose the epoch")
    train = cached_crops(out / "crops-train.safetensors", train_rows, config)
    val = cached_crops(out / "crops-val.safetensors", val_rows, config)

    start = build_backbone(config.backbone, seed=config.seed)
    start_digest = weights_digest(start)
    torch.manual_seed(stable_seed(config.seed, "head"))
    model = (
        ClipClassifier(start, config.backbone, config.clip_centred)
        if config.clip_frames
        else FrameClassifier(start, config.backbone)
    ).to(target)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    units = _unit_targets(train, config)
    per_batch = _clips_per_batch(config) if config.clip_frames else config.batch_size
    steps = len(batches(np.arange(len(units)), per_batch))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps, pct_start=0.15
    )
    twins = round(units.count(0) * config.self_blend_p)
    weights = class_weights(units + [1] * twins)
    stopper = EarlyStopping(config.patience)
    history = _resume(out, model, optimizer, scheduler, stopper, steps)
    data = {
        "train_videos": _counts(train),
        "val_videos": _counts(val),
        "train_crops": len(train.crops),
        "self_blended_per_epoch": twins,
    }
    for epoch in range(len(history), config.epochs):
        if stopper.should_stop:
            break
        rng = np.random.default_rng(stable_seed(config.seed, "epoch", epoch))
        torch.manual_seed(stable_seed(config.seed, "torch", epoch))
        loss = train_one_epoch(model, train, optimizer, scheduler, config, rng, weights, target)
        record = {
            "epoch": epoch,
            "train_loss": loss,
            **evaluate(model, val, target),
            "lr": float(scheduler.get_last_lr()[0]),
        }
        history.append(record)
        with (out / LOG_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        on_epoch(record)
        if stopper.update(record["val_auc"], epoch):
            _save_weights(out, model.backbone, config, start_digest, data, stopper)
        _save_state(out, model, optimizer, stopper, history)
    if not (out / WEIGHTS_FILE).is_file():
        raise ValueError("no epoch had a VAL ROC-AUC; check the VAL videos' crops")
    result = finetune_record(out / WEIGHTS_FILE)
    dump_json(out / RECORD_FILE, {**result, "history": history})
    return result


def finetune_record(weights_file: Path) -> dict[str, Any]:
    """The finetune record stored in a weights file written by `finetune` (empty if none)."""
    if weights_file.suffix != ".safetensors" or not weights_file.is_file():
        return {}
    with safe_open(str(weights_file), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return json.loads(metadata[RECORD_KEY]) if RECORD_KEY in metadata else {}


def _counts(crops: CropSet) -> dict[str, int]:
    fake = sum(crops.targets)
    return {"real": len(crops.targets) - fake, "fake": fake}


def _save_weights(
    out: Path,
    backbone: nn.Module,
    config: FinetuneConfig,
    start_digest: str,
    data: dict[str, Any],
    stopper: EarlyStopping,
) -> None:
    """Write the headless backbone with its record (written when VAL AUC improves)."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    record = {
        "method": _method(config),
        "arch": config.backbone.arch,
        "start_weights": config.backbone.weights,
        "start_weights_sha256": start_digest,
        "weights_sha256": weights_digest(backbone),
        "best_epoch": stopper.best_epoch,
        "best_val_auc": stopper.best_score,
        "data": data,
        "config": config.model_dump(mode="json"),
    }
    temporary = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(temporary), metadata={RECORD_KEY: json.dumps(record)})
    temporary.replace(out / WEIGHTS_FILE)


def _method(config: FinetuneConfig) -> str:
    """How the fakes of a run were made, in words (for the record)."""
    blended = "self-blended images (Shiohara & Yamasaki, CVPR 2022), landmark-free masks"
    if config.clip_frames:
        blended += f", as clips of {config.clip_frames} crops jittered per frame"
        if config.clip_centred:
            blended += " (read centred on the clip's mean)"
    if config.self_blend_p == 0:
        return "supervised on the dataset's fake videos"
    if config.dataset_fakes:
        return f"{blended}, and the dataset's fake videos"
    return blended


def _save_state(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stopper: EarlyStopping,
    history: list[dict[str, float]],
) -> None:
    """The last epoch's model and optimizer (tensors in safetensors, the rest in JSON)."""
    tensors = {f"model.{k}": v for k, v in copy_state(model).items()}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(out / (STATE_FILE + ".tmp")))
    progress = {
        "history": history,
        "param_groups": optimizer_state["param_groups"],
        "stopper": {
            "best_score": stopper.best_score,
            "best_epoch": stopper.best_epoch,
            "bad_epochs": stopper.bad_epochs,
        },
    }
    (out / (STATE_FILE + ".tmp")).replace(out / STATE_FILE)
    dump_json(out / PROGRESS_FILE, progress)


def _resume(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stopper: EarlyStopping,
    steps_per_epoch: int,
) -> list[dict[str, float]]:
    """Load the last saved epoch, if any; returns the history so far."""
    if not (out / PROGRESS_FILE).is_file():
        return []
    progress = json.loads((out / PROGRESS_FILE).read_text(encoding="utf-8"))
    tensors = load_file(str(out / STATE_FILE))
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    )
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    history = progress["history"]
    with warnings.catch_warnings():  # stepping the schedule forward without optimizer steps
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(len(history) * steps_per_epoch):
            scheduler.step()
    optimizer.load_state_dict({"state": state, "param_groups": progress["param_groups"]})
    best = progress["stopper"]
    stopper.best_score = best["best_score"]
    stopper.best_epoch, stopper.bad_epochs = best["best_epoch"], best["bad_epochs"]
    logger.info("resuming %s after epoch %d", out, len(history) - 1)
    return history


def _check_same_run(out: Path, config: FinetuneConfig) -> None:
    """Refuse to resume a run made with other settings."""
    file = out / "config.json"
    if file.is_file():
        previous = FinetuneConfig.model_validate_json(file.read_text(encoding="utf-8"))
        if previous != config:
            raise ValueError(f"{out} was fine-tuned with other settings; use another --out")
    else:
        file.write_text(config.model_dump_json(indent=2), encoding="utf-8")
