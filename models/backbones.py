"""Frame backbones: torchvision classifiers without their head, MTCNN's O-net without its outputs
(`mtcnn_onet`), and the batched frame embedder.

Weight sources (never a silent fallback to random weights):

- ``state_dict`` argument: the exact weights stored in a checkpoint (loaded strictly).
- ``weights_file`` argument or ``spec.weights == "file:<path>"``: a local safetensors file, or a
  torch file loaded with ``weights_only=True``.
- ``"imagenet"``: torchvision's ImageNet weights from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``); downloaded only when ``allow_download`` is set.
- ``"facenet"`` (``mtcnn_onet`` only): the O-net weights shipped in the facenet-pytorch wheel,
  a face network trained for detection and landmarks: pretrained face features, offline.
- ``"none"``: random initialisation from a fixed seed (deterministic).

Head entries (``fc.*``, ``classifier.*``; O-net's ``dense6_*``) of full-model state dicts are
dropped.
When ``spec.weights_sha256`` is set, the loaded weights must have that digest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from facenet_pytorch.models.mtcnn import ONet
from safetensors.torch import load_file as load_safetensors
from torch import nn
from torch.nn import functional as F
from torchvision import models as tv
from torchvision.models import WeightsEnum

from models.errors import WeightsError
from models.faces import mtcnn_weights
from models.spec import BackboneSpec
from models.transfer import to_device

_ARCHS: dict[str, tuple[Callable[..., nn.Module], WeightsEnum, str]] = {
    "resnet50": (tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V2, "fc"),
    "resnet18": (tv.resnet18, tv.ResNet18_Weights.IMAGENET1K_V1, "fc"),
    "mobilenet_v3_large": (
        tv.mobilenet_v3_large,
        tv.MobileNet_V3_Large_Weights.IMAGENET1K_V2,
        "classifier",
    ),
    "efficientnet_b0": (tv.efficientnet_b0, tv.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier"),
}

FILE_PREFIX = "file:"


class ComputeDtypeError(RuntimeError):
    """The spec's compute dtype cannot run on the requested device."""


class ONetTrunk(nn.Module):
    """MTCNN's O-net up to its 256-unit layer: ``[N, 3, 48, 48]`` face crops -> ``[N, 256]``.

    It takes crops normalised with the spec's ``mean`` and ``std``, as every backbone does, and
    first maps them to O-net's own input scaling, ``(pixel - 127.5) / 128``.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        onet = ONet(pretrained=False)
        for name in ONET_TRUNK:
            self.add_module(name, getattr(onet, name))
        scale = torch.tensor(std) * 255.0 / 128.0
        shift = (torch.tensor(mean) * 255.0 - 127.5) / 128.0
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.shift
        for name in ONET_TRUNK[:-2]:
            x = getattr(self, name)(x)
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # O-net's (Caffe) flattening order
        return self.prelu5(self.dense5(x))


ONET_TRUNK = (
    *(f"{layer}{i}" for i in (1, 2, 3) for layer in ("conv", "prelu", "pool")),
    "conv4",
    "prelu4",
    "dense5",
    "prelu5",
)
ONET_HEADS = ("dense6_1", "dense6_2", "dense6_3")


def build_backbone(
    spec: BackboneSpec,
    *,
    weights_file: str | Path | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    allow_download: bool = False,
) -> nn.Module:
    """The headless backbone of ``spec.arch`` on CPU in eval mode: ``[N, 3, H, W] -> [N, D]``.

    Precedence of weight sources: ``state_dict``, ``weights_file``, then ``spec.weights``.
    """
    module, heads = _headless(spec, seed)
    pretrained = "facenet" if spec.arch == "mtcnn_onet" else "imagenet"
    if state_dict is not None:
        _load(module, state_dict, heads, "the given state dict")
    elif weights_file is not None:
        _load(module, _read_weights_file(Path(weights_file)), heads, str(weights_file))
    elif spec.weights.startswith(FILE_PREFIX):
        path = Path(spec.weights.removeprefix(FILE_PREFIX))
        _load(module, _read_weights_file(path), heads, str(path))
    elif spec.weights == pretrained == "facenet":
        _load(module, mtcnn_weights("onet.pt"), heads, "facenet-pytorch's onet.pt")
    elif spec.weights == pretrained:
        imagenet = _ARCHS[spec.arch][1]
        _load(module, _imagenet_state_dict(imagenet, allow_download), heads, imagenet.url)
    elif spec.weights != "none":
        raise WeightsError(
            f"unknown {spec.arch} weights {spec.weights!r}: use {pretrained!r}, 'none' or "
            "'file:<path>'"
        )
    if spec.weights_sha256 is not None and weights_digest(module) != spec.weights_sha256:
        raise WeightsError(
            f"{spec.arch} weights digest {weights_digest(module)} does not match the spec's "
            f"weights_sha256 {spec.weights_sha256}"
        )
    return module.eval()


def _headless(spec: BackboneSpec, seed: int) -> tuple[nn.Module, tuple[str, ...]]:
    """The randomly initialised (seeded) backbone and the names of the heads it lacks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.arch == "mtcnn_onet":
            return ONetTrunk(spec.mean, spec.std), ONET_HEADS
        factory, _, head = _ARCHS[spec.arch]
        module = factory(weights=None)
    setattr(module, head, nn.Identity())
    return module, (head,)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 hex over the state dict: names sorted, each with dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load(module: nn.Module, state: Mapping[str, Any], heads: tuple[str, ...], source: str) -> None:
    """Load strictly, ignoring the entries of the removed heads."""
    body = {k: v for k, v in state.items() if k.split(".", 1)[0] not in heads}
    try:
        module.load_state_dict(body, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights from {source} do not fit the backbone: {exc}") from exc


def _read_weights_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of an untrusted file is a weights problem
        raise WeightsError(f"cannot read backbone weights {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def _imagenet_state_dict(weights: WeightsEnum, allow_download: bool) -> Mapping[str, Any]:
    """torchvision's ImageNet weights through its own loader (hash checked when downloading)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file() and not allow_download:
        raise WeightsError(
            f"ImageNet weights not in the torch hub cache: expected {cached} "
            f"(from {weights.url}); place the file there or set TORCH_HOME"
        )
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # network, hash or unpickling failures all mean: no weights
        raise WeightsError(f"cannot load ImageNet weights into {cached}: {exc}") from exc


class FrameEmbedder:
    """Batched ``[N, 3, S, S]`` uint8 crops (on CPU or ``device``) -> ``[N, D]`` float32 CPU
    features. CPU crops go to CUDA through pinned memory (`models.transfer.to_device`).

    Moves ``module`` to ``device`` (in place). On CPU, the same input gives bit-identical output.
    With ``compile``, the backbone runs through ``torch.compile`` (inductor, weights frozen, so
    BatchNorm folds into the convolutions; batch size dynamic, so one compilation serves every
    batch): the first call compiles (tens of seconds on CPU, which needs a C++ compiler); call
    `warm_up` before serving. Compiled features equal eager ones up to the compute dtype's rounding.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        module: nn.Module,
        device: torch.device | str = "cpu",
        *,
        max_batch: int = 64,
        compile: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.spec = spec
        self.device = torch.device(device)
        self.max_batch = max_batch
        self._autocast_dtype = autocast_dtype(spec.dtype, self.device)
        self._memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        self.module = module.to(self.device, memory_format=self._memory_format).eval()
        self.compiled = compile
        self._network: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.module, dynamic=True, options={"freezing": True})
            if compile
            else self.module
        )
        self._mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """Features of uint8 RGB crops, resized to ``spec.input_size`` when needed."""
        if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[1] != 3:
            raise ValueError(f"expected [N, 3, S, S] uint8 crops, got {crops.dtype} {crops.shape}")
        if len(crops) == 0:
            return torch.empty((0, self.feature_dim), dtype=torch.float32)
        with torch.inference_mode():
            parts = [
                self._forward(crops[i : i + self.max_batch])
                for i in range(0, len(crops), self.max_batch)
            ]
        return torch.cat(parts)

    def warm_up(self) -> None:
        """Run one small batch, so a compiled backbone compiles now rather than on a request."""
        size = self.spec.input_size
        self.embed(torch.zeros((2, 3, size, size), dtype=torch.uint8))

    def _forward(self, crops: torch.Tensor) -> torch.Tensor:
        single = self.compiled and len(crops) == 1
        if single:  # a batch of one would specialise the compiled graph: run it as a pair
            crops = crops.expand(2, -1, -1, -1)
        pixels = to_device(crops, self.device).float().div_(255.0)
        size = self.spec.input_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(
                pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        pixels = ((pixels - self._mean) / self._std).contiguous(memory_format=self._memory_format)
        enabled = self._autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self._autocast_dtype, enabled=enabled):
            features = self._network(pixels)
        return features[:1].float().cpu() if single else features.float().cpu()


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the spec's compute dtype, or an error if the device lacks it."""
    if dtype == "float32":
        return None
    if device.type not in ("cpu", "cuda"):
        raise ComputeDtypeError(f"{dtype} compute is only supported on cpu and cuda, not {device}")
    if dtype == "float16":
        if device.type != "cuda":
            raise ComputeDtypeError("float16 compute needs a CUDA device; use bfloat16 on CPU")
        return torch.float16
    supported = (
        torch.cuda.is_bf16_supported()
        if device.type == "cuda"
        else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    if not supported:
        raise ComputeDtypeError(f"bfloat16 compute is not supported on {device} of this machine")
    return torch.bfloat16
