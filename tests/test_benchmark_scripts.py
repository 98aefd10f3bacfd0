"""The benchmark scripts keep the command line's exit contract (:func:`injcert.cli.run_script`): a
missing, corrupt or untrusted checkpoint is one ``NAME: error: ...`` line on stderr and exit 2, with
nothing printed before the checkpoint was read; a bug still shows its traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from injcert.cli import run_script
from injcert.errors import CheckpointError
from tests.helpers import ROOT, subprocess_env

BENCH = Path(ROOT) / "benchmarks"
#: the scripts (not the asv suites ``bench_*.py`` nor helpers) that read a checkpoint, themselves or
#: through ``benchlib.pyramid_study``
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py")
                 if not p.name.startswith(("bench_", "_"))
                 and any(k in p.read_text(encoding="utf-8") for k in ("load_checkpoint", "pyramid_study(")))
#: leading arguments a script needs before its checkpoint
LEAD = {"sample_grid.py": ["out.png"], "gate_probes.py": ["blur"], "figures.py": ["figures_out"]}


def test_every_checkpoint_script_ends_with_run_script():
    assert len(SCRIPTS) >= 10, SCRIPTS
    for name in SCRIPTS:
        text = (BENCH / name).read_text(encoding="utf-8")
        assert re.search(r'if __name__ == "__main__":\n    run_script\(main\)\n\Z', text), name


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bad_checkpoint_is_one_line_and_exit_2(tmp_path, name):
    # alternate the two kinds of junk across the scripts to keep the suite fast
    junk = tmp_path / "missing.ckpt" if SCRIPTS.index(name) % 2 else Path("/etc/passwd")
    run = subprocess.run([sys.executable, str(BENCH / name), *LEAD.get(name, []), str(junk)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=subprocess_env())
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: ") and "Traceback" not in run.stderr
    assert run.stdout == "", run.stdout  # nothing printed before the checkpoint was read
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_run_script_maps_user_errors_to_exit_2_and_keeps_bugs(capsys):
    def bad_input():
        raise CheckpointError("checkpoint not found: 'x.ckpt'\nsecond line")

    with pytest.raises(SystemExit) as exc:
        run_script(bad_input, "demo.py")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "demo.py: error: checkpoint not found: 'x.ckpt'\n"

    def bug():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_script(bug, "demo.py")
    for value, code in ((None, 0), (3, 3)):
        with pytest.raises(SystemExit) as exc:
            run_script(lambda: value, "demo.py")
        assert exc.value.code == code


def test_reconstruction_rows_variant_without_flow_keeps_the_estimate():
    """The ablation row ``--ablate-flow`` adds: started at varsigma_e = 1e-6 the network cannot move the
    fill, so it is the classical estimate; the best-baseline figure ignores it (``keep``)."""
    import torch

    from injcert.cli.compare import reconstruction_rows
    from tests.helpers import tiny_unet

    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    keep: dict = {}
    rows = reconstruction_rows(tiny_unet().eval(), [x], 2, 0, ["box", "random"], keep=keep,
                               options={"gate": False}, variants={"no flow": {"sigma_start": 1e-6}})
    for c in ("box", "random"):
        by = {r.method: r for r in rows if r.corruption == c}
        assert set(by) == {"inpaint_biharmonic", "ours", "no flow"}
        assert abs(by["no flow"].psnr - by["inpaint_biharmonic"].psnr) < 1e-3
        assert abs(by["ours"].psnr - by["inpaint_biharmonic"].psnr) > 1e-3  # the default level does move it
        assert keep[c][5] == "inpaint_biharmonic"


def test_write_results_takes_saved_rows_only_of_the_same_weights_and_steps(tmp_path):
    """``scripts/write_results.py --rows`` merges earlier ``restoration_by_size.py --json`` outputs
    (each size may run separately), and refuses a file of other weights, other steps, missing a size or
    restored in one call per batch."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("write_results", Path(ROOT) / "scripts" / "write_results.py")
    wr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wr)

    def saved(name, size, weights="abc", steps=20, per_image=True):
        row = dict(size=size, corruption="box", method="ours", psnr=30.0, ssim=0.9, psnr_region=20.0,
                   seconds=1.0, source="restorer")
        path = tmp_path / name
        path.write_text(json.dumps({"weights": weights, "steps": steps, "images": ["chelsea"], "per_image": per_image,
                                    "seconds": {str(size): 5.0}, "rows": [row, dict(row, method="tv")]}))
        return str(path)

    data, seconds = wr._saved_rows([saved("a.json", 64), saved("b.json", 256)], [64, 256], 20, "abc")
    assert sorted({r["size"] for r in data["rows"]}) == [64, 256] and seconds == 10.0
    for files, sizes in (([saved("c.json", 64, weights="other")], [64]), ([saved("d.json", 64, steps=50)], [64]),
                         ([saved("e.json", 64)], [64, 256]), ([str(tmp_path / "missing.json")], [64]),
                         ([saved("f.json", 64, per_image=False)], [64])):
        with pytest.raises(SystemExit):
            wr._saved_rows(files, sizes, 20, "abc")
    (tmp_path / "garbage.json").write_bytes(b"\x00not json")
    with pytest.raises(SystemExit, match="is not the JSON"):
        wr._saved_rows([str(tmp_path / "garbage.json")], [64], 20, "abc")


def test_reconstruction_rows_restore_each_image_in_its_own_call():
    """By default each image of a batch is restored in a call of its own (its own start check and gate),
    so its row is the mean over single-image calls; ``per_image=False`` is one call for the batch; the
    source counts the start estimates where they differ."""
    import torch

    from injcert.benchlib import _source
    from injcert.data.corruptions import make_corruption
    from injcert.metrics import psnr
    from injcert.tasks.reconstruct import reconstruct_full
    from tests.helpers import tiny_unet

    torch.manual_seed(0)
    net = tiny_unet().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rows = {per: next(r for r in reconstruction_rows_of(net, x, per) if r.method == "ours") for per in (True, False)}
    obs = make_corruption("random").sample(x, 0)
    with torch.no_grad():
        single = [reconstruct_full(net, obs.y[i:i + 1], obs.m[i:i + 1], 2, 0).image for i in range(2)]
        batch = reconstruct_full(net, obs.y, obs.m, 2, 0, operator=obs.operator).image
    assert rows[True].psnr == pytest.approx(psnr(torch.cat(single), x), abs=1e-9)
    assert rows[False].psnr == pytest.approx(psnr(batch, x), abs=1e-9)
    assert _source([("restorer", False), ("inpaint_biharmonic", True), ("restorer", None)]) == \
        "inpaint_biharmonic 1, restorer 2; flow kept 1/2"
    assert _source([("bm3d", None)] * 3) == "bm3d; flow"


def test_a_blur_started_at_gate_off_is_reported_as_its_start() -> None:
    """A blurred region starts at GATE_OFF without a gate while BLUR_FLOW is off: the table says the
    flow did not shape it (``flow kept 0/n``), and where the flow runs ungated it says ``flow``."""
    import torch

    from injcert.benchlib import _flow_used
    from injcert.data.corruptions import make_corruption
    from injcert.tasks.reconstruct import reconstruct_full
    from tests.helpers import tiny_unet

    torch.manual_seed(0)
    net = tiny_unet().eval()
    obs = make_corruption("blur").sample(torch.rand(1, 3, 16, 16) * 2 - 1, 0)
    with torch.no_grad():
        off = reconstruct_full(net, obs.y, obs.m, 2, 0)
        ungated = reconstruct_full(net, obs.y, obs.m, 2, 0, gate=False)
    assert off.flow_kept is None and _flow_used(net, off) is False
    assert ungated.flow_kept is None and _flow_used(net, ungated) is None


def reconstruction_rows_of(net, x, per_image):
    from injcert.cli.compare import reconstruction_rows

    return reconstruction_rows(net, [x], 2, 0, ["random"], per_image=per_image)
