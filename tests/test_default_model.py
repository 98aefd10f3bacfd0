"""The shipped model: loads, stays within its certified budget, and certifies end to end."""

from __future__ import annotations

import json

import pytest
import torch

import injcert
from injcert.cli import main as cli_main
from injcert.data.images import PatchDataset

pytestmark = pytest.mark.skipif(not injcert.DEFAULT_CHECKPOINT.exists(), reason="no shipped model in this checkout")


@pytest.fixture(scope="module")
def model():
    return injcert.load_checkpoint(injcert.DEFAULT_CHECKPOINT)


def test_shipped_model_is_small_safe_and_working(model) -> None:
    assert injcert.DEFAULT_CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    assert injcert.DEFAULT_CHECKPOINT.read_bytes()[:2] != b"PK"  # not a torch.save pickle
    x = torch.rand(1, 3, 19, 23) * 2 - 1
    with torch.no_grad():
        out = model(x, torch.full((1,), 0.5))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    meta = model.checkpoint_metadata
    assert meta["step"] > 0 and meta["val_loss"] > 0 and isinstance(meta["seed"], int)


def test_certified_bound_brackets_the_truth_on_heldout_patches(model) -> None:
    bound = injcert.lipschitz_bound(model, (3, 32, 32), size_independent=True).value
    assert bound <= model.lipschitz_budget
    patches = torch.stack([PatchDataset(split="heldout", patch_size=16, length=4, seed=1)[i] for i in range(4)])
    t = torch.tensor([0.05, 0.3, 0.6, 0.9])
    lower = injcert.lipschitz_lower_bound(lambda v: model(v, t), patches, n_iter=8,
                                          ascent_steps=2)
    assert 0 < lower <= bound


def test_shipped_model_certifies(tmp_path) -> None:
    out = tmp_path / "cert.json"
    code = cli_main(["certify", str(injcert.DEFAULT_CHECKPOINT), "--json", str(out), "--steps", "10",
                     "--samples", "2", "--quiet"])
    report = json.loads(out.read_text())
    assert code == 0, [p for p in report["properties"] if p["status"] == "FAIL"]
    assert report["verdict"] == "PASS"


def test_shipped_model_certifies_fixed_point_at_50_steps(model) -> None:
    """The noise-adaptive budget makes every Euler step of the default 50-step grid injective
    (h_k alpha_k L(t_k) < 1), so the fixed-point inverse is certified and the log-det interval has a
    finite lower end; L(t) <= B(t) at every grid time."""
    import math

    cert = injcert.certify(model, steps=50, method="fixed_point", samples=2, patch_size=16, logdet_size=4,
                           hutchpp_steps=3, hutchpp_queries=4, lipschitz_iters=3)
    props = {p.name: p for p in cert.properties}
    assert cert.verdict == "PASS", [p.summary for p in cert.failures]
    assert props["integrator"].value < 1.0
    assert all(r["certified"] <= r["budget"] for r in props["lipschitz_bound"].details["per_t"])
    assert math.isfinite(props["logdet_interval"].details["certified_lower"])
    assert props["round_trip_fixed_point"].status == "PASS"


def test_the_named_constructor_builds_the_shipped_architecture():
    """``CondUNet.shipped()`` is the shipped configuration (``CondUNet()``'s defaults are a small model):
    the same config and the same tensors, by name and shape, as the trained checkpoint."""
    import injcert
    from injcert.model.unet import CondUNet

    built, shipped = CondUNet.shipped(), injcert.load_checkpoint(injcert.DEFAULT_CHECKPOINT)
    assert built.config == shipped.config
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in shipped.state_dict().items()}
