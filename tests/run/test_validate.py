"""The checks before anything runs (:mod:`cnnbench.run.validate`): each bad value, device or output folder is one
line, before any run folder exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnbench.cli import main
from cnnbench.errors import ConfigError
from cnnbench.run.validate import check_values
from tests.helpers import compose_fast, gzip_dataset


def test_batch_check_reads_the_size_of_a_gzipped_training_set(fake_data, no_data_env, tmp_path):
    """The batch-versus-training-set check happens before training, from the .gz file's header too."""
    gz = gzip_dataset(fake_data, tmp_path / "gz")
    check_values(compose_fast(gz, "trainer.batch_size=256"))
    with pytest.raises(ConfigError, match=r"trainer.batch_size=300 is larger than the training set \(256 examples"):
        check_values(compose_fast(gz, "trainer.batch_size=300"))


BAD_VALUES = [
    # every device.* option is checked before a folder exists (speed.settings.check_device_options)
    (["device.compile=maybe"], "device.compile must be one of true, false, auto, got 'maybe'"),
    (["device.compile='True'"], "device.compile must be one of true, false, auto, got 'True'"),  # a string
    (["device.fused_optimizer=maybe"], "device.fused_optimizer must be one of true, false, auto, got 'maybe'"),
    (["device.channels_last=maybe"], "device.channels_last must be one of true, false, auto, got 'maybe'"),
    (["device.precision=fp8"], "device.precision must be one of fp32, bf16, fp16, auto, got 'fp8'"),
    (["device.fast_pooling=maybe"], "device.fast_pooling must be true or false, got maybe"),  # the schema's type
    (["device.fused_kernels=maybe"], "device.fused_kernels must be true or false, got maybe"),
    (["device.malloc_tuning=maybe"], "device.malloc_tuning must be true or false, got maybe"),
    (["device.cudnn_benchmark=maybe"], "device.cudnn_benchmark must be true or false, got maybe"),
    (["device.conv_weight_grad=nhwc"], "device.conv_weight_grad must be one of auto, native, got 'nhwc'"),
    (["device.num_threads=0"], "device.num_threads must be auto, null or a positive integer, got 0"),
    (["device.num_threads=two"], "device.num_threads must be auto, null or a positive integer, got 'two'"),
    (["device.precision=fp16", "device.type=cpu"], "device.precision=fp16 needs CUDA"),
    (["model=resnt"], "Could not find 'model/resnt'. Available options in 'model': alexnet"),
    (["optimizer=sgdd"], "Could not find 'optimizer/sgdd'. Available options in 'optimizer': adam, adamw, sgd,"),
    (["dataset.resize=0"], "dataset.resize must be a positive integer, got 0"),
    (["dataset.resize=abc"], "dataset.resize must be an integer, got abc"),
    (["trainer.batch_size=-2"], "trainer.batch_size must be a positive integer, got -2"),
    (["trainer.epochs=0"], "trainer.epochs must be a positive integer, got 0"),
    (["trainer.epochs=1.5"], "trainer.epochs must be an integer, got 1.5"),
    (["optimizer.lr=-0.1"], "optimizer.lr must be a positive number, got -0.1"),
    (["optimizer.lr=fast"], "optimizer.lr must be a number, got fast"),
    (["optimizer=adam", "optimizer.momentum=0.9"], "Could not override 'optimizer.momentum': no such key; the chosen "
                                                   "optimizer option does not have it"),
    (["model=alexnet", "dataset.resize=28"], "alexnet cannot take 28x28 inputs: its layers shrink the image to "
                                             "nothing; the smallest size that works is 65"),
    (["trainer.batch_size=70000"], "trainer.batch_size=70000 is larger than the training set (60000 examples"),
    (["trainer.epoch=3"], "Could not override 'trainer.epoch': no such key; did you mean 'trainer.epochs'?"),
    (["+trainer.epocs=3"], "unknown config key 'trainer.epocs' (added with '+'): cnnbench does not read it; "
                           "did you mean 'trainer.epochs'?"),
    (["trainer.epochs=???"], "no value given for trainer.epochs"),
    (["-m", "model=lenet,alexnet", "dataset.resize=28"], "alexnet cannot take 28x28 inputs"),
    (["optimizer.lr=nan"], "optimizer.lr must be a finite number, got nan"),
    (["optimizer.lr=inf"], "optimizer.lr must be a finite number, got inf"),
    (["-m", "optimizer.lr=0.1,nan"], "optimizer.lr must be a finite number, got nan"),
    (["trainer.divergence_loss=-inf"], "trainer.divergence_loss must be a finite number, got -inf"),
    (["optimizer=sgd_momentum", "optimizer.momentum=1.0"], "optimizer.momentum must be a number in [0, 1), got 1.0"),
    (["optimizer.momentum=-0.1"], "optimizer.momentum must be a number in [0, 1), got -0.1"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    (["optimizer=adamw", "optimizer.weight_decay=-0.01"], "optimizer.weight_decay must be a number >= 0, got -0.01"),
    (["optimizer.nesterov=true"], "optimizer.nesterov=true needs optimizer.momentum > 0"),
    (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma must be a positive number, got 0.0"),
    (["trainer.logs_per_epoch=-1"], "trainer.logs_per_epoch must be an integer >= 0, got -1"),
    (["trainer.label_smoothing=1.0"], "trainer.label_smoothing must be a number in [0, 1), got 1.0"),
    (["trainer.ema.decay=1.5"], "trainer.ema.decay must be a number in [0, 1), got 1.5"),
    (["augment=flip_crop", "augment.flip=2"], "augment.flip must be a number in [0, 1], got 2"),
    (["model=vgg11", "model.width_div=0"], "model.width_div must be a positive integer dividing 64 for vgg11, got 0"),
    (["model=vgg11", "model.width_div=3"], "model.width_div must be a positive integer dividing 64 for vgg11, got 3"),
    (["model=alexnet", "model.dropout=1.0"], "model.dropout must be a number in [0, 1) for alexnet, got 1.0"),
    (["model=lenet", "+model.lrn=true"], "model lenet takes no keyword argument 'lrn' (model.lrn); it "
                                         "takes activation, pooling, channels"),
    (["model=vgg11", "+model.widht_div=2"], "model vgg11 takes no keyword argument 'widht_div' (model.widht_div); it "
                                            "takes conv_arch, width_div, dropout"),
    (["model=resnet18", "dataset.resize=4096"], "a training step of resnet18 at batch size 256, 4096x4096 inputs, fp32 "
                                                "precision needs about "),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_config_values_get_one_line_before_anything_runs(overrides, message, tmp_path, capsys):
    out_dir = tmp_path / "out"
    dir_override = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
    assert main(["train", *overrides, f"{dir_override}={out_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cnnbench train: error: ") and message in err
    assert not out_dir.exists()  # refused before any run or sweep folder was created


def test_cuda_without_a_gpu_is_refused(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "device=cuda", f"hydra.run.dir={tmp_path / 'x'}"]) == 2
    assert "device=cuda was asked for but no CUDA device is available" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_output_folder_on_a_virtual_file_system_is_refused(capsys):
    """/proc passes a permission check for root, yet no folder can be made there: one line, exit 2."""
    assert main(["train", "hydra.run.dir=/proc/cnnbench-test/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith("cnnbench train: error: cannot create the output folder /proc/cnnbench-test/run: /proc "
                          "does not accept new folders (")
    assert not Path("/proc/cnnbench-test").exists()


def test_unwritable_output_folder_is_refused(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", f"hydra.run.dir={blocker / 'run'}"]) == 2
    assert f"cannot create the output folder {blocker / 'run'}: {blocker} is a file" in capsys.readouterr().err
