"""Reading a network while it runs: each stage's feature maps, the first convolution (its kernels and its
response), the layer Grad-CAM looks at and the class activation maps themselves.

A *stage* is a top-level block of the network, as ``cnnbench summary`` lists them (a conv layer, a pooling
layer, an Inception, residual or dense block, a VGG or NiN block): the children of the network, or of the
one module a wrapper holds. Everything is read with forward hooks in one pass, so any ``nn.Module`` works,
not only the ``nn.Sequential`` book networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CnnbenchError


class InspectError(CnnbenchError):
    """A network, an image or a class that ``cnnbench inspect`` cannot use; one sentence."""


@dataclass
class Stage:
    """One stage's output for the images inspected."""

    name: str  # "4. Conv2d": position and class name as cnnbench summary prints them
    path: str  # the module's dotted name in the network ("3", "layer4")
    output: torch.Tensor  # (N, C, H, W) float32 on the CPU

    @property
    def file_stem(self) -> str:
        """A file name for the stage: "04_Conv2d"."""
        position, rest = self.name.split(". ", 1)
        return f"{int(position):02d}_" + "".join(ch if ch.isalnum() else "_" for ch in rest).strip("_")


@dataclass
class Probe:
    """What one forward pass showed."""

    stages: list[Stage]  # the stages whose output is a map (N, C, H, W), in the network's order
    logits: torch.Tensor  # (N, classes) float32 on the CPU
    first_conv: str | None  # dotted name of the first nn.Conv2d called, None without one
    first_response: torch.Tensor | None  # (N, C_out, H', W') its output on the images
    shapes: dict[str, tuple[int, ...]]  # dotted module name -> shape of its first output (tensors only)


def stage_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) of each top-level block, descending through wrappers of a single module."""
    prefix, module = "", model
    children = list(module.named_children())
    while len(children) == 1:
        prefix, module = f"{prefix}{children[0][0]}.", children[0][1]
        children = list(module.named_children())
    return [(prefix + name, child) for name, child in children]


def stage_label(position: int, path: str, module: nn.Module) -> str:
    """"3. AvgPool2d" for a Sequential's child (as cnnbench summary names it); "5. layer2 (Sequential)" for a
    named attribute."""
    attr = path.rsplit(".", 1)[-1]
    kind = type(module).__name__
    return f"{position}. {kind}" if attr.isdigit() else f"{position}. {attr} ({kind})"


@torch.no_grad()
def probe(model: nn.Module, x: torch.Tensor) -> Probe:
    """Run ``x`` (N, C, S, S), prepared as the run prepares its inputs, through ``model`` (eval mode) and keep
    every stage's map, the first convolution's response and every module's output shape."""
    outputs: dict[str, torch.Tensor] = {}
    conv_calls: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def keep(module: nn.Module, _inputs: tuple, output: object) -> None:
        name = names[module]
        if isinstance(output, torch.Tensor) and name not in outputs:  # the first call of a reused module
            outputs[name] = output.detach()
            if isinstance(module, nn.Conv2d):
                conv_calls.append(name)

    handles = [m.register_forward_hook(keep) for m in names]
    try:
        logits = model(x).float()
    finally:
        for h in handles:
            h.remove()
    stages = []
    for position, (path, module) in enumerate(stage_modules(model), start=1):
        out = outputs.get(path)
        if out is not None and out.dim() == 4:  # (N, C, H, W) maps; flattened and linear stages have none
            stages.append(Stage(stage_label(position, path, module), path, out.float().contiguous().cpu()))
    first = conv_calls[0] if conv_calls else None
    response = outputs[first].float().contiguous().cpu() if first else None
    return Probe(stages, logits.cpu(), first, response, {k: tuple(v.shape) for k, v in outputs.items()})


def _holds_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def cam_layer(model: nn.Module, shapes: dict[str, tuple[int, ...]], chosen: str | None = None) -> str:
    """The dotted name of the layer Grad-CAM reads: ``chosen``, or the last block that holds a convolution
    and outputs a map, looked for from the top level down (ResNet's last residual stage, GoogLeNet's last
    Inception, VGG's last block, LeNet's second conv). Its maps are the last ones that still know where
    things are; the layers after them pool that away."""
    modules = dict(model.named_modules())
    if chosen is not None:
        if chosen not in modules or len(shapes.get(chosen, ())) != 4:
            maps = [name for name, shape in shapes.items() if name and len(shape) == 4]
            raise InspectError(f"--layer {chosen!r} is not a layer of this network with a (N, C, H, W) output; "
                               f"for example: {', '.join(maps[-6:]) or 'none'}")
        return chosen
    if not _holds_conv(model):
        raise InspectError(f"{type(model).__name__} has no convolution layer (nn.Conv2d): Grad-CAM needs one")
    prefix, module = "", model
    while True:
        children = list(module.named_children())
        k = max(i for i, (_, child) in enumerate(children) if _holds_conv(child))
        path = prefix + children[k][0]
        shape = shapes.get(path, ())
        if isinstance(children[k][1], nn.Conv2d) or len(shape) == 4:
            return _after_elementwise(children, k, prefix, shapes)
        prefix, module = path + ".", children[k][1]  # a block whose output is flat (pooled): look inside it


# torch's modules of layers that work element by element (or per channel): activations, norms, dropout
_ELEMENTWISE = {f"torch.nn.modules.{m}" for m in ("activation", "batchnorm", "normalization", "dropout")}


def _after_elementwise(children: list[tuple[str, nn.Module]], k: int, prefix: str,
                       shapes: dict[str, tuple[int, ...]]) -> str:
    """The name of ``children[k]``, or of the last of the norm, activation and dropout layers right after it
    that keep its output's shape: Grad-CAM reads the maps after the
    activation, as its paper does (a conv's raw output can be negative everywhere)."""
    shape = shapes.get(prefix + children[k][0])
    while k + 1 < len(children):
        name, child = children[k + 1]
        elementwise = type(child).__module__ in _ELEMENTWISE
        if not elementwise or shapes.get(prefix + name) != shape:  # a pool that keeps a 1x1 map stops it too
            break
        k += 1
    return prefix + children[k][0]


def grad_cam(model: nn.Module, layer: str, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """Grad-CAM (captum's ``LayerGradCam``: the layer's maps weighted by the spatially averaged gradient of the
    class score, summed over channels, negative parts cut) of ``targets[i]`` for image ``i``, upsampled
    bilinearly to the input's side: (N, S, S) float32 on the CPU, >= 0, not normalized."""
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, dict(model.named_modules())[layer])
    with torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)  # a graph even when the weights are frozen
        maps = cam.attribute(inputs, target=targets, relu_attributions=True)  # (N, 1, h, w)
    up = LayerAttribution.interpolate(maps.detach().float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up[:, 0].clamp_min(0).cpu()  # bilinear upsampling keeps it >= 0; clamp rounding
