"""The one-file checkpoint: safetensors holding the backbone, every member and the spec.

Layout (no pickle anywhere):

- tensors `backbone.<name>`: the backbone's state dict, exactly the weights used to extract
  features (floating tensors are float32; the compute dtype is applied at run time by autocast);
- tensors `members.<member>.<name>`: each ensemble member's state dict (float32);
- metadata `format = "dfd-checkpoint"`, `format_version = "1"`, `spec` = the PipelineSpec JSON.

`spec.backbone.weights_sha256` always names the stored backbone weights (see `weights_digest`):
`save_checkpoint` fills it in when it is missing and refuses to save when it names other weights,
because features cached or trained under that spec (its `spec_hash`) came from those weights.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.backbones import build_backbone, weights_digest
from models.ensemble import Ensemble
from models.errors import CheckpointError
from models.spec import PipelineSpec

logger = logging.getLogger(__name__)

FORMAT = "dfd-checkpoint"
FORMAT_VERSION = "1"
BACKBONE_PREFIX = "backbone."
MEMBERS_PREFIX = "members."


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A validated checkpoint: its spec and the tensors to load into the modules it describes."""

    spec: PipelineSpec
    backbone_state: dict[str, Tensor]
    member_states: dict[str, dict[str, Tensor]]  # member name -> that member's state dict


def save_checkpoint(
    path: str | os.PathLike[str], spec: PipelineSpec, backbone: nn.Module, ensemble: Ensemble
) -> PipelineSpec:
    """Write `spec`, `backbone` and `ensemble` atomically to `path`; return the spec as saved.

    The saved spec carries the backbone's `weights_sha256` (and `spec.temperature`, not the
    ensemble's run-time temperature, is what a loaded detector uses).
    """
    if ensemble.spec != spec.ensemble or ensemble.input_dim != spec.feature_dim:
        raise CheckpointError(
            "the ensemble was not built from this spec's ensemble and feature dim"
        )
    floating = {v.dtype for v in backbone.state_dict().values() if v.is_floating_point()}
    if floating - {torch.float32}:
        raise CheckpointError(
            f"backbone weights must be float32, found {sorted(map(str, floating))}"
        )
    digest = weights_digest(backbone)
    declared = spec.backbone.weights_sha256
    if declared is not None and declared != digest:
        raise CheckpointError(
            f"spec.backbone.weights_sha256 {declared} names other weights than the backbone "
            f"being saved ({digest}); features made under this spec came from other weights"
        )
    spec = spec.model_copy(
        update={"backbone": spec.backbone.model_copy(update={"weights_sha256": digest})}
    )
    tensors = _prefixed(BACKBONE_PREFIX, backbone.state_dict())
    tensors |= _prefixed("", ensemble.state_dict())
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": spec.model_dump_json()}
    _write_atomically(Path(path), tensors, metadata)
    logger.info("saved checkpoint %s (spec_hash %s)", path, spec.spec_hash)
    return spec


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read and fully validate a checkpoint; every problem raises `CheckpointError`."""
    path = Path(path)
    try:
        spec = spec_of(path)
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file or is corrupted: {exc}") from exc
    backbone_state = _unprefixed(BACKBONE_PREFIX, tensors)
    ensemble_state = _unprefixed(MEMBERS_PREFIX, tensors)
    unexpected = sorted(n for n in tensors if not n.startswith((BACKBONE_PREFIX, MEMBERS_PREFIX)))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors {_preview(unexpected)}")
    _check_float32(path, tensors)
    _check_backbone(path, spec, backbone_state)
    member_states = _check_members(path, spec, ensemble_state)
    return LoadedCheckpoint(spec=spec, backbone_state=backbone_state, member_states=member_states)


def spec_of(path: str | os.PathLike[str]) -> PipelineSpec:
    """The spec of a checkpoint, reading only its header."""
    path = Path(path)
    try:
        with safe_open(_existing(path), framework="pt") as reader:
            return _parse_metadata(path, reader.metadata())
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a safetensors file or is corrupted: {exc}") from exc


def describe(path: str | os.PathLike[str]) -> dict[str, object]:
    """The header of a checkpoint as a JSON-ready dict: spec, spec_hash, format version and, up
    front, what it was trained on."""
    spec = spec_of(path)
    return {
        "checkpoint": str(path),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec_hash": spec.spec_hash,
        "trained_on": spec.trained_on.model_dump(mode="json"),
        "spec": json.loads(spec.model_dump_json()),
    }


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _parse_metadata(path: Path, metadata: Mapping[str, str] | None) -> PipelineSpec:
    metadata = metadata or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has unsupported format_version {version!r}; this code reads {FORMAT_VERSION!r}"
        )
    try:
        return PipelineSpec.model_validate_json(metadata.get("spec", ""))
    except ValidationError as exc:
        raise CheckpointError(f"{path} holds an invalid spec: {exc}") from exc


def _check_float32(path: Path, tensors: Mapping[str, Tensor]) -> None:
    wrong = sorted(
        n for n, t in tensors.items() if t.is_floating_point() and t.dtype != torch.float32
    )
    if wrong:
        raise CheckpointError(f"{path}: tensors must be float32: {_preview(wrong)}")


def _check_backbone(path: Path, spec: PipelineSpec, state: dict[str, Tensor]) -> None:
    """Names, shapes and digest of the backbone tensors, checked on a weightless (meta) module."""
    blank = spec.backbone.model_copy(update={"weights": "none", "weights_sha256": None})
    with torch.device("meta"):
        module = build_backbone(blank)
    _assign(path, f"backbone {spec.backbone.arch}", module, state)
    digest = weights_digest(module)
    if digest != spec.backbone.weights_sha256:
        raise CheckpointError(
            f"{path}: backbone weights digest {digest} does not match the spec's "
            f"weights_sha256 {spec.backbone.weights_sha256}"
        )


def _check_members(
    path: Path, spec: PipelineSpec, state: dict[str, Tensor]
) -> dict[str, dict[str, Tensor]]:
    """Names and shapes of the member tensors; returns them per member."""
    with torch.device("meta"):
        ensemble = Ensemble(spec.ensemble, spec.feature_dim)
    _assign(path, "ensemble", ensemble.members, state)
    return {
        name: _unprefixed(f"{name}.", state) for name in (m.name for m in spec.ensemble.members)
    }


def _assign(path: Path, what: str, module: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Strictly load `state` into `module` by reference (no copy); any mismatch is an error."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not fit the {what} of the spec: "
            f"missing tensors [{_preview(missing)}], unexpected tensors [{_preview(unexpected)}]"
        )
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensors do not fit the {what} of the spec: {exc}") from exc


def _prefixed(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared storage) under `prefix`."""
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _unprefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def _write_atomically(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
