"""``cnnbench export``: ONNX, pt2 (torch.export) and TorchScript files reproducing PyTorch's logits, every network."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch

from cnnbench.cli import main
from cnnbench.errors import ExportError
from cnnbench.evaluation import export
from cnnbench.models import build_model, get_model_spec, list_models

FAST = {"lenet", "lenet_bn"}  # the others take 3 to 20 s per format on 2 CPU cores: marked slow


def registry_cases() -> list:
    return [pytest.param(name, fmt, marks=() if name in FAST else (pytest.mark.slow,), id=f"{name}-{fmt}")
            for name in list_models() for fmt in export.FORMATS]


def with_trained_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Seeded weights, and BatchNorm statistics and affine parameters away from their initial 0 and 1,
    as after training: an exporter that mishandled BatchNorm in eval mode would otherwise go unnoticed."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


@pytest.mark.parametrize("name,fmt", registry_cases())
def test_every_registered_network_exports_with_matching_logits(name, fmt, tmp_path):
    side = max(get_model_spec(name).min_resolution, 32)  # small, but a size every network takes
    model = with_trained_statistics(build_model(name, image_size=side)).eval()
    images = torch.rand(4, 1, side, side)
    path = tmp_path / f"{name}{export.FORMATS[fmt]}"
    diff = export.export_model(model, fmt, path, images, {"model": name})
    assert diff <= export.TOLERANCE and path.is_file()
    if fmt == "onnx":  # the batch dimension is a name, not a number
        import onnx

        dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
        assert dim.dim_param and not dim.dim_value


def test_export_command_writes_the_file_and_its_input_contract(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for fmt, suffix in export.FORMATS.items():
        assert main(["export", str(run), "--format", fmt]) == 0
        out = capsys.readouterr().out
        path = run / "export" / f"lenet_bn{suffix}"
        assert f"wrote {path}" in out and "checked on the first 64 test images and a batch of 3" in out
        assert float(out.split("largest |logit difference| ")[1].split()[0]) <= 1e-4
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["classes"][9] == "Ankle boot" and sidecar["input"] == "float32 (batch, 1, 28, 28)"
        assert sidecar["normalize"] is None and sidecar["format"] == fmt
        if fmt == "onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
            assert json.loads(props["cnnbench"]) == sidecar
        else:
            with zipfile.ZipFile(path) as z:
                inside = [n for n in z.namelist() if n.endswith("extra/cnnbench.json")]
                assert json.loads(z.read(inside[0])) == sidecar
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "m.pt.json").is_file()


def test_an_export_that_does_not_reproduce_pytorch_fails_and_leaves_no_file(tmp_path, monkeypatch):
    write, run = export.WRITERS["torchscript"]
    monkeypatch.setitem(export.WRITERS, "torchscript", (write, lambda path, x: run(path, x) + 2e-4))
    path = tmp_path / "m.pt"
    with pytest.raises(ExportError, match=r"does not reproduce PyTorch: largest \|logit difference\| 0.0002 > 0.0001"):
        export.export_model(build_model("lenet").eval(), "torchscript", path, torch.rand(4, 1, 28, 28),
                            {"model": "lenet"})
    assert not path.exists()


def test_export_error_paths_are_one_line_and_exit_2(trained_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--format", "torchscript"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cnnbench export: error: run folder {tmp_path / 'nowhere'} does not exist"]
    assert main(["export", str(trained_run), "--format", "torchscript", "--checkpoint", "best"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_export_ships_the_ema_weights(ema_run, trained_run, tmp_path):
    """conftest's ema_run: trained weights in the EMA, untrained raw ones; the exported network computes
    the trained network's logits."""
    from cnnbench.evaluation.inference import load_run

    run = tmp_path / "run"
    shutil.copytree(ema_run, run)
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    exported = torch.jit.load(str(tmp_path / "m.pt"))
    trained = load_run(trained_run, device="cpu").model
    x = torch.rand(4, 1, 28, 28)  # (B, C, H, W)
    with torch.no_grad():
        assert torch.allclose(exported(x), trained(x), atol=1e-5)
