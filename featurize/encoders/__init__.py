"""The encoder registry: frozen, timm-shaped specs; one factory; weights from a path, a directory or the hub.

>>> from slide2expr.featurize.encoders import create_encoder, get_spec
>>> get_spec("uni").dim
1024
>>> enc = create_encoder("stain-texture")
>>> import torch
>>> enc(torch.zeros(2, 3, 224, 224, dtype=torch.uint8)).shape == (2, enc.dim)
True
"""

from __future__ import annotations

from slide2expr.featurize.encoders._catalog import register_builtin
from slide2expr.featurize.encoders._compiled import CompiledEncoder, CompileError
from slide2expr.featurize.encoders._model import (
    Encoder,
    bf16_supported,
    build_backbone,
    create_encoder,
)
from slide2expr.featurize.encoders._spec import (
    OUTPUT_MODES,
    EncoderSpec,
    UnknownEncoderError,
    get_spec,
    list_encoders,
    register_encoder,
    unregister_encoder,
)
from slide2expr.featurize.encoders._stain_texture import feature_names as stain_texture_feature_names
from slide2expr.featurize.encoders._weights import (
    WEIGHTS_ENV,
    WeightsMismatchError,
    WeightsNotFoundError,
    WeightsSource,
    file_sha256,
    find_local_weights,
    locate_weights,
    read_state_dict,
    resolve_weights,
    weights_available,
)

register_builtin()

__all__ = [
    "OUTPUT_MODES",
    "WEIGHTS_ENV",
    "CompileError",
    "CompiledEncoder",
    "Encoder",
    "EncoderSpec",
    "UnknownEncoderError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "WeightsSource",
    "bf16_supported",
    "build_backbone",
    "create_encoder",
    "file_sha256",
    "find_local_weights",
    "get_spec",
    "list_encoders",
    "locate_weights",
    "read_state_dict",
    "register_encoder",
    "resolve_weights",
    "stain_texture_feature_names",
    "unregister_encoder",
    "weights_available",
]
