"""The :class:`Encoder` module (uint8 in, normalised on the device, one vector per tile out) and its factory."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slide2expr.featurize.encoders._spec import EncoderSpec, _entry, _jsonable
from slide2expr.featurize.encoders._weights import (
    drop_classifier,
    file_sha256,
    load_into,
    read_state_dict,
    resolve_weights,
    strip_prefixes,
)


def timm_builder(spec: EncoderSpec, *, depth: int | None = None) -> nn.Module:
    """Build ``spec``'s backbone with random weights via ``timm.create_model`` (the default builder)."""
    import timm

    kwargs = spec.resolved_timm_kwargs(depth=depth)
    return timm.create_model(
        spec.architecture, pretrained=False, pretrained_cfg_overlay=dict(spec.pretrained_cfg), **kwargs
    )


def bf16_supported(device: str | torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device`` (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class Encoder(nn.Module):
    """A frozen tile encoder: ``(B, 3, H, W)`` uint8 RGB in, ``(B, dim)`` float32 out.

    The input is converted to float, scaled by 1/255 and normalised with the data config's mean/std on the
    input's device (so tiles travel as uint8), then the backbone runs and ``spec.output_mode`` turns its output
    into one vector per tile.

    Attributes
    ----------
    spec
        The :class:`EncoderSpec`.
    backbone
        The network (a timm model, or the hand-crafted module).
    data_config
        From :func:`timm.data.resolve_model_data_config`: ``input_size`` ``(3, H, W)``, ``mean``, ``std``,
        ``interpolation``, ``crop_pct``, ``crop_mode``.
    weights_sha256
        sha256 of the weights file, or None (random or weight-free).
    weights_source
        ``random``, ``none`` (weight-free), or where the file was found (``argument``, ``env``, ``package``,
        ``hf-cache``, ``hub``).
    weights_path
        The weights file, or None.
    depth
        The reduced depth the backbone was built with, or None for the full architecture.
    channels_last
        Whether inputs are converted to ``channels_last`` before the backbone (set by :meth:`to_device`).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        backbone: nn.Module,
        *,
        data_config: dict[str, Any],
        weights_sha256: str | None = None,
        weights_source: str = "random",
        weights_path: str | None = None,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.data_config = dict(data_config)
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self.weights_path = weights_path
        self.depth = depth
        self.channels_last = False
        mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        # x * scale - shift == (x / 255 - mean) / std, one fused pass on the device
        self.register_buffer("_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("_shift", mean / std, persistent=False)
        self.eval()
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.spec.dim)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` the encoder expects tiles resized to."""
        _, h, w = self.data_config["input_size"]
        return int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self._scale.device

    def autocast_dtype(self, device: str | torch.device | None = None) -> torch.dtype | None:
        """``torch.bfloat16`` when bf16 autocast suits this encoder on ``device`` (default: its own), else None."""
        device = torch.device(device) if device is not None else self.device
        return torch.bfloat16 if self.spec.bf16_ok and bf16_supported(device) else None

    def to_device(self, device: str | torch.device = "cpu", *, channels_last: bool | None = None) -> Encoder:
        """Move to ``device`` and choose the memory format (default: ``channels_last`` for CNNs, ViTs on CUDA)."""
        device = torch.device(device)
        if channels_last is None:
            channels_last = self.spec.family == "cnn" or (
                device.type == "cuda" and self.spec.family != "handcrafted"
            )
        self.channels_last = bool(channels_last)
        self.to(device)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def normalise(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 → float32 normalised with the data config's mean/std, on ``x``'s device."""
        if x.dtype != torch.uint8:
            raise TypeError(
                f"encoder {self.spec.name!r} expects uint8 tiles (B, 3, H, W) with values 0-255, got {x.dtype}"
            )
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"encoder {self.spec.name!r} expects tiles shaped (B, 3, H, W), got {tuple(x.shape)}; "
                "convert NHWC arrays with x.permute(0, 3, 1, 2)"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.addcmul(-self._shift, x.float(), self._scale)

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch of tiles.

        Parameters
        ----------
        x
            ``(B, 3, H, W)`` uint8 RGB on the encoder's device.

        Returns
        -------
        Tensor
            ``(B, dim)`` float32.
        """
        z = self.normalise(x)
        mode = self.spec.output_mode
        if mode == "pooled":
            out = self.backbone(z)
        else:
            tokens = self.backbone.forward_features(z)
            n_prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
            if mode == "cls":
                out = tokens[:, 0]
            elif mode == "mean_patch":
                out = tokens[:, n_prefix:].mean(dim=1)
            else:  # cls+mean_patch
                out = torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(dim=1)], dim=-1)
        if out.ndim != 2 or out.shape[1] != self.spec.dim:
            raise RuntimeError(
                f"encoder {self.spec.name!r} produced shape {tuple(out.shape)}, its spec says (B, {self.spec.dim})"
            )
        return out.float()

    @torch.inference_mode()
    def embed(self, tiles: Tensor | np.ndarray, *, batch_size: int = 8, autocast: bool = True) -> np.ndarray:
        """Embed many tiles in batches (a convenience for notebooks, tests and benchmarks).

        Parameters
        ----------
        tiles
            ``(N, 3, H, W)`` uint8 tensor, or ``(N, H, W, 3)`` uint8 numpy array.
        batch_size
            Tiles per forward pass.
        autocast
            Use bf16 autocast where :meth:`autocast_dtype` allows it.

        Returns
        -------
        numpy.ndarray
            ``(N, dim)`` float32.
        """
        if isinstance(tiles, np.ndarray):
            if tiles.ndim != 4 or tiles.shape[-1] != 3:
                raise ValueError(f"expected an (N, H, W, 3) uint8 array, got shape {tiles.shape}")
            tiles = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)
        dtype = self.autocast_dtype() if autocast else None
        ctx = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        out = np.empty((tiles.shape[0], self.dim), dtype=np.float32)
        with ctx:
            for start in range(0, tiles.shape[0], batch_size):
                batch = tiles[start : start + batch_size].to(self.device, non_blocking=True)
                out[start : start + batch.shape[0]] = self(batch).cpu().numpy()
        return out

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing as JSON: what a tile goes through before the backbone."""
        cfg = _jsonable(self.data_config)
        cfg.update({"scale": "1/255", "channel_order": "RGB", "dtype_in": "uint8", "normalised_on": "device"})
        return cfg

    def metadata(self) -> dict[str, Any]:
        """JSON-able description for the store's Parquet metadata (``encoder_spec`` key)."""
        import timm

        return {
            "name": self.spec.name,
            "architecture": self.spec.architecture,
            "dim": self.spec.dim,
            "output_mode": self.spec.output_mode,
            "preprocessing": self.preprocessing(),
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "weights_file": Path(self.weights_path).name if self.weights_path else None,
            "hf_hub_id": self.spec.hf_hub_id,
            "licence": self.spec.licence,
            "timm_kwargs": _jsonable(self.spec.timm_kwargs),
            "depth": self.depth,
            "params_m": round(sum(p.numel() for p in self.backbone.parameters()) / 1e6, 3),
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
        }

    def compiled(self, batch_size: int, *, fallback: bool = False) -> CompiledEncoder:
        """This encoder compiled with ``torch.compile`` for batches of ``batch_size`` (one per batch size and
        encoder, kept: a second run in the process does not compile again). See :class:`CompiledEncoder`."""
        cache = self.__dict__.setdefault("_compiled_by_batch", {})
        key = (int(batch_size), bool(fallback))
        if key not in cache:
            cache[key] = CompiledEncoder(self, batch_size, fallback=fallback)
        return cache[key]

    def compiled_ready(self, batch_size: int, *, fallback: bool = False) -> CompiledEncoder | None:
        """A form of :meth:`compiled` for ``batch_size`` that an earlier call already compiled (and that did not fall
        back to eager); else None, without compiling. Once compiled, ``fallback`` no longer matters (compiling is
        what can fail), so a form compiled with either setting serves both."""
        cache = self.__dict__.get("_compiled_by_batch", {})
        for key in ((int(batch_size), bool(fallback)), (int(batch_size), not fallback)):
            c = cache.get(key)
            if c is not None and c.ready:
                return c
        return None

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, dim={self.spec.dim}, output_mode={self.spec.output_mode!r}"


class CompileError(RuntimeError):
    """``torch.compile`` could not build the encoder here (no C++ compiler, an operator Inductor lacks, …)."""


class CompiledEncoder:
    """An :class:`Encoder` compiled with ``torch.compile`` (Inductor, weights frozen into the graph) for batches
    of one size: smaller batches are padded with blank tiles to that size and larger ones run in pieces, so one
    graph serves a whole run (a new shape would compile again, tens of seconds on a small CPU).

    The first call compiles: 8–40 s on 2 cores, once per process (Inductor also caches on disk, in
    ``$TORCHINDUCTOR_CACHE_DIR``, so later processes take about half as long). Outputs equal the eager
    encoder's within float rounding (per-tile cosine > 0.99999). Measured on 2 AVX2 cores in fp32, batch 8, on
    uint8 tiles: resnet50-trunc 23.1–23.6 tiles/s against 19.6–20.0 eager, efficientnet-lite0 86 against 72,
    resnet18 45 against 41 (benchmarks/featurize.py ``--compile on``).

    ``fallback``: if compiling fails, warn once and run the eager encoder instead of raising
    :class:`CompileError`.

    Attributes
    ----------
    active
        Whether the compiled graph is in use (False after a fallback).
    seconds_compile
        Wall time of the first call, compiling included (None before it).
    error
        Why compiling failed (after a fallback), else None.
    """

    def __init__(self, enc: Encoder, batch_size: int, *, fallback: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.enc = enc
        self.batch_size = int(batch_size)
        self.fallback = fallback
        self.active = True
        self.seconds_compile: float | None = None
        self.error: str | None = None
        self._fn = torch.compile(enc, dynamic=False)

    @property
    def spec(self) -> EncoderSpec:
        return self.enc.spec

    @property
    def ready(self) -> bool:
        """Compiled and in use: the first call compiled it and did not fall back to eager."""
        return self.active and self.seconds_compile is not None

    def __call__(self, x: Tensor) -> Tensor:
        """``(k, 3, H, W)`` uint8 → ``(k, dim)`` float32, as :meth:`Encoder.forward`."""
        b, k = self.batch_size, int(x.shape[0])
        if not self.active:
            return self.enc(x)
        if k > b:
            return torch.cat([self(x[i : i + b]) for i in range(0, k, b)])
        if k < b:
            fmt = (
                torch.channels_last
                if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                else torch.contiguous_format
            )
            padded = torch.empty((b, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
            padded[:k] = x
            padded[k:] = 0
            return self._call(padded)[:k]
        return self._call(x)

    def _call(self, x: Tensor) -> Tensor:
        import logging
        import time

        from torch._inductor import config as inductor_config

        if self.seconds_compile is not None:
            with inductor_config.patch(freezing=True):
                return self._fn(x)
        t0 = time.perf_counter()
        # torch's C++ builder logs "No CUDA runtime is found" on every CPU-only machine: not news to our users
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            # freezing: weights become constants Inductor folds and prepacks (conv + batch norm, oneDNN layouts);
            # patched per call, so other compiles in the process keep their settings
            with inductor_config.patch(freezing=True):
                out = self._fn(x)
        except Exception as exc:  # noqa: BLE001 - any compiler failure; the eager encoder still works
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.error = f"{type(exc).__name__}: {first}"[:300]
            if not self.fallback:
                raise CompileError(
                    f"torch.compile could not compile encoder {self.spec.name!r} here ({self.error}); "
                    "run it eagerly with --compile off (Python: compile='off')"
                ) from exc
            import warnings

            warnings.warn(
                f"torch.compile could not compile encoder {self.spec.name!r} ({self.error}); running it eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            self.active = False
            return self.enc(x)
        finally:
            quiet.setLevel(level)
        self.seconds_compile = time.perf_counter() - t0
        return out


def build_backbone(name: str | EncoderSpec, *, depth: int | None = None) -> nn.Module:
    """Build the backbone of ``name`` with random weights (use ``with torch.device("meta"):`` for giant ones)."""
    spec = name if isinstance(name, EncoderSpec) else _entry(name).spec
    entry = _entry(spec.name) if not isinstance(name, EncoderSpec) else None
    builder = entry.builder if entry is not None and entry.builder is not None else timm_builder
    if depth is not None and spec.family != "vit":
        raise ValueError(
            f"encoder {spec.name!r}: depth= applies to transformer encoders only ({spec.family})"
        )
    if depth is not None and int(depth) < 1:
        raise ValueError(f"encoder {spec.name!r}: depth must be >= 1, got {depth}")
    return builder(spec, depth=depth)


def create_encoder(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    depth: int | None = None,
    channels_last: bool | None = None,
) -> Encoder:
    """Build a registered encoder, load its weights, and move it to ``device`` in eval mode.

    Parameters
    ----------
    name
        Registry name (see :func:`list_encoders`).
    weights
        A local weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``); default: ``$SLIDE2EXPR_WEIGHTS/
        <weights_file>``, the package that ships them, the Hugging Face cache, then the hub when online.
    pretrained
        False builds random weights (tests, benchmarks); ``weights`` must then be None.
    device
        Where the encoder runs; inputs must be uint8 tensors on this device.
    depth
        Build a transformer with only ``depth`` blocks (tests of giant architectures).
    channels_last
        Memory format; default ``channels_last`` for CNNs, and for ViTs on CUDA.

    Returns
    -------
    Encoder
        Frozen (``eval``, no grad), with ``weights_sha256`` recorded.

    Raises
    ------
    UnknownEncoderError
        ``name`` is not registered (the message lists the known names).
    WeightsNotFoundError
        No weights here and the hub cannot be used (the message says which file to put where).
    WeightsMismatchError
        The weights file does not fit the architecture.
    """
    entry = _entry(name)
    spec = entry.spec
    if not pretrained and weights is not None:
        raise ValueError(f"encoder {name!r}: pass either weights=... or pretrained=False, not both")
    if weights is not None and not spec.needs_weights:
        raise ValueError(f"encoder {name!r} is weight-free; do not pass weights= (got {str(weights)!r})")
    # resolve first: a missing file fails fast, before a giant architecture is built
    src = (
        resolve_weights(spec, weights=weights)
        if (pretrained and spec.needs_weights) or weights is not None
        else None
    )
    backbone = build_backbone(name, depth=depth)
    backbone.eval()
    sha = None
    source = "random" if spec.needs_weights else "none"
    path_str = None
    if src is not None:
        sd = strip_prefixes(read_state_dict(src.path), backbone)
        sd = entry.convert(sd, backbone) if entry.convert is not None else drop_classifier(sd, backbone)
        load_into(backbone, sd, encoder=name, path=src.path)
        sha = file_sha256(src.path)
        source = src.origin
        path_str = str(src.path)
    import timm.data

    data_config = timm.data.resolve_model_data_config(backbone)
    enc = Encoder(
        spec,
        backbone,
        data_config=data_config,
        weights_sha256=sha,
        weights_source=source,
        weights_path=path_str,
        depth=depth,
    )
    return enc.to_device(device, channels_last=channels_last)
