"""Bundled images, the split, patch sampling and PNG input/output (injcert.data.images)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from injcert.data import images as images_mod
from injcert.errors import ConfigError
from injcert.data.images import (
    HELDOUT_IMAGES,
    IMAGES,
    TRAIN_IMAGES,
    PatchDataset,
    load_image,
    save_image,
)


@pytest.fixture
def no_network(monkeypatch):
    """Make every socket connection fail, so a download attempt would raise."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_registry_image_loads_offline(name, no_network):
    info = IMAGES[name]
    assert info.path.is_file(), info.path  # shipped inside the scikit-image wheel
    images_mod._decode.cache_clear()
    x = load_image(name)
    assert tuple(x.shape) == info.shape
    assert x.dtype == torch.float32
    assert info.rgb == (x.shape[0] == 3)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.max() - x.min()) > 0.5  # a real picture, not a constant


def test_split_is_fixed_and_disjoint():
    assert set(TRAIN_IMAGES).isdisjoint(HELDOUT_IMAGES)
    assert set(TRAIN_IMAGES) | set(HELDOUT_IMAGES) == set(IMAGES)
    assert {"retina", "hubble_deep_field", "astronaut"} <= set(HELDOUT_IMAGES)
    assert all(IMAGES[n].split == "heldout" for n in HELDOUT_IMAGES)
    assert IMAGES["retina"].shape == (3, 1411, 1411)
    assert IMAGES["hubble_deep_field"].shape == (3, 872, 1000)
    assert len(TRAIN_IMAGES) >= 8


def test_gray_and_dtype_options():
    rgb = load_image("coffee", gray=True, dtype=torch.float64)
    assert rgb.shape == (1, 400, 600) and rgb.dtype == torch.float64
    g3 = load_image("camera", gray=False)
    assert g3.shape == (3, 512, 512) and torch.equal(g3[0], g3[2])
    # the result is a fresh copy: editing it does not change the cache
    a = load_image("camera")
    a.zero_()
    assert float(load_image("camera").abs().sum()) > 0
    with pytest.raises(ValueError, match="int64"):
        load_image("camera", dtype=torch.int64)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="'nosuchimage'") as info:
        load_image("nosuchimage")
    assert "astronaut" in str(info.value) and "\n" not in str(info.value)
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(missing)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(str(missing))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(bad)


@given(
    c=st.sampled_from([1, 3]),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 1000),
    batched=st.booleans(),
)
def test_png_round_trip(tmp_path_factory, c, h, w, seed, batched):
    path = tmp_path_factory.mktemp("png") / "x.png"
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 256, (c, h, w), generator=g)
    x = q.float() / 127.5 - 1.0  # exactly representable 8-bit levels
    save_image(x.unsqueeze(0) if batched else x, path)
    back = load_image(path)
    assert back.shape == x.shape
    assert torch.allclose(back, x, atol=1e-6)


def test_png_overwrite_is_not_served_from_cache(tmp_path):
    path = tmp_path / "y.png"
    save_image(torch.full((1, 4, 4), -1.0), path)
    assert float(load_image(path).max()) == -1.0
    import os
    import time

    save_image(torch.full((1, 4, 4), 1.0), path)
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10_000_000))
    time.sleep(0)
    assert float(load_image(path).min()) == 1.0


def test_save_image_clips_and_rejects_bad_shapes(tmp_path):
    p = save_image(torch.tensor([[[3.0, -3.0]]]), tmp_path / "c.png")
    assert torch.equal(load_image(p), torch.tensor([[[1.0, -1.0]]]))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        save_image(torch.zeros(2, 4, 4), tmp_path / "d.png")
    with pytest.raises(ValueError, match="int64"):
        save_image(torch.zeros(1, 4, 4, dtype=torch.int64), tmp_path / "d.png")


def test_rgba_png_drops_alpha(tmp_path):
    from skimage import io

    arr = np.zeros((5, 6, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 128
    io.imsave(tmp_path / "a.png", arr, check_contrast=False)
    x = load_image(tmp_path / "a.png")
    assert x.shape == (3, 5, 6) and torch.all(x[0] == 1) and torch.all(x[1] == -1)


def test_patch_dataset_deterministic_and_shaped():
    ds = PatchDataset(patch_size=16, length=50, seed=3)
    again = PatchDataset(patch_size=16, length=50, seed=3)
    other = PatchDataset(patch_size=16, length=50, seed=4)
    assert len(ds) == 50
    for i in (0, 7, 49):
        p = ds[i]
        assert p.shape == (3, 16, 16) and p.dtype == torch.float32
        assert float(p.min()) >= -1 and float(p.max()) <= 1
        assert torch.equal(p, again[i])
    assert not all(torch.equal(ds[i], other[i]) for i in range(5))
    assert torch.equal(ds[-1], ds[49])
    # item i depends only on (seed, i): the access order is irrelevant
    fresh = PatchDataset(patch_size=16, length=50, seed=3)
    assert torch.equal(fresh[7], ds[7])
    with pytest.raises(IndexError):
        ds[50]


def test_patch_dataset_channels():
    gray = PatchDataset(images=("coffee", "camera"), patch_size=8, channels=1, length=10)
    assert all(gray[i].shape == (1, 8, 8) for i in range(10))
    rgb = PatchDataset(images=("camera",), patch_size=8, channels=3, length=3)
    p = rgb[0]
    assert p.shape == (3, 8, 8) and torch.equal(p[0], p[1])


def test_patch_dataset_matches_source_image():
    ds = PatchDataset(images=("camera",), patch_size=8, channels=1, length=20)
    img = load_image("camera")[0]
    for i in range(20):
        p = ds[i][0]
        windows = img.unfold(0, 8, 1).unfold(1, 8, 1)
        hit = (windows == p).all(-1).all(-1).any() or (windows == p.flip(-1)).all(-1).all(-1).any()
        assert hit


@pytest.mark.parametrize("s_max", [1.0, 4.0, 12.0])
def test_downscaled_patches_are_resized_crops(tmp_path, s_max: float) -> None:
    """``max_downscale``: on a horizontal ramp a crop of side s*p resized to p has s times the slope per
    pixel, so the measured slope gives each patch's scale: within [1, s_max], spread over it, and
    deterministic per index; ``max_downscale=1`` is the native-resolution stream of draws."""
    from skimage.io import imsave

    ramp = np.tile(np.linspace(0, 255, 512), (512, 1)).round().astype(np.uint8)
    path = tmp_path / "ramp.png"
    imsave(path, ramp, check_contrast=False)
    ds = PatchDataset(images=(str(path),), patch_size=32, channels=1, length=40, seed=5, max_downscale=s_max)
    native = PatchDataset(images=(str(path),), patch_size=32, channels=1, length=40, seed=5)
    slope0 = 2.0 / 511  # native slope per pixel in [-1, 1] units
    scales = []
    for i in range(40):
        p = ds[i]
        assert p.shape == (1, 32, 32) and torch.equal(p, ds[i])
        scales.append(float((p[0, :, -5] - p[0, :, 4]).abs().mean()) / 23 / slope0)
        if s_max == 1.0:
            assert torch.equal(p, native[i])
    assert min(scales) >= 0.9 and max(scales) <= s_max * 1.1
    if s_max > 1:
        assert max(scales) > 0.6 * s_max and min(scales) < 2.0


def test_patch_dataset_validation(tmp_path):
    for bad in (0.5, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="max_downscale"):
            PatchDataset(images=("camera",), max_downscale=bad)  # type: ignore[arg-type]
    for bad in (0.5, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="max_downscale"):
            PatchDataset(images=("camera",), max_downscale=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retina"):
        PatchDataset(images=("camera", "retina"), split="train")
    with pytest.raises(ValueError, match="camera"):
        PatchDataset(images=("camera",), split="heldout")
    with pytest.raises(ValueError, match="600"):
        PatchDataset(images=("coins",), patch_size=600)
    with pytest.raises(ValueError, match="'bogus'"):
        PatchDataset(split="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-1"):
        PatchDataset(patch_size=-1)
    with pytest.raises(ValueError, match="2"):
        PatchDataset(channels=2)
    assert PatchDataset(split="heldout", patch_size=8, length=2).images == HELDOUT_IMAGES
    path = save_image(torch.full((3, 20, 20), -1.0), tmp_path / "u.png")
    user = PatchDataset(images=(str(path),), patch_size=8, length=2)
    assert torch.equal(user[0], torch.full((3, 8, 8), -1.0))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader(workers):
    ds = PatchDataset(images=("camera", "coffee"), patch_size=8, length=12, seed=1)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, shuffle=False)
    batches = list(dl)
    assert len(batches) == 3 and batches[0].shape == (4, 3, 8, 8)
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(12)]))


def test_patch_dataset_dihedral_draws_turned_patches_and_leaves_the_default_draws_alone():
    """``dihedral`` turns some patches by quarter turns of the same crop; without it the draws are those
    of a dataset that never had the option."""
    plain = PatchDataset(images=("camera",), patch_size=16, length=40, seed=9)
    again = PatchDataset(images=("camera",), patch_size=16, length=40, seed=9, dihedral=False)
    turned = PatchDataset(images=("camera",), patch_size=16, length=40, seed=9, dihedral=True)
    same = differ = 0
    for i in range(40):
        a, b, c = plain[i], again[i], turned[i]
        assert torch.equal(a, b)
        assert any(torch.equal(torch.rot90(a, k, (-2, -1)), c) for k in range(4))
        same += torch.equal(a, c)
        differ += not torch.equal(a, c)
    assert same > 0 and differ > 0
    with pytest.raises(ConfigError, match="dihedral"):
        PatchDataset(images=("camera",), patch_size=16, length=4, dihedral=1)


def test_prepare_photos_writes_rgb_at_each_short_side_and_skips_bad_files(tmp_path):
    """``scripts/prepare_photos.py``: grey, grey-with-alpha and RGBA photographs come out as RGB PNGs
    whose short side is each asked-for size; an unreadable file is skipped with one line."""
    import subprocess
    import sys
    from pathlib import Path

    from skimage import io

    src, out = tmp_path / "src", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    io.imsave(src / "grey.png", rng.integers(0, 256, (60, 90), dtype=np.uint8), check_contrast=False)
    io.imsave(src / "sub" / "la.png", rng.integers(0, 256, (90, 60, 2), dtype=np.uint8), check_contrast=False)
    io.imsave(src / "rgba.png", rng.integers(0, 256, (50, 50, 4), dtype=np.uint8), check_contrast=False)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_photos.py"
    res = subprocess.run([sys.executable, str(script), str(src), str(out), "--sides", "20", "30"],
                         capture_output=True, text=True, check=True)
    assert res.stderr.count("skipping") == 1 and "broken.jpg" in res.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}_{k}.png" for s in ("grey", "la", "rgba") for k in (20, 30))
    for p in out.iterdir():
        im = io.imread(p)
        assert im.ndim == 3 and im.shape[-1] == 3, (p.name, im.shape)
        assert min(im.shape[:2]) == int(p.stem.rsplit("_", 1)[1]), (p.name, im.shape)
    grey = io.imread(out / "grey_30.png")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == grey[..., 2]).all()
