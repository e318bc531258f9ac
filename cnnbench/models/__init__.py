"""The networks: the book's families, then FastNet (not from the book), then the sources of any other network
(custom, torchvision, timm) and installed packages' entry points. Importing registers them all."""

# Imported in the book's chapter order, which is the order `list_models()` reports.
from . import lenet, alexnet, vgg, nin, googlenet, resnet, densenet  # noqa: F401,I001
# Beyond the book, after its families (so list_models() gives the chapters first).
from . import fastnet  # noqa: F401,I001
# Sources, not networks: your own factory, torchvision's and timm's (list_models() leaves them out).
from . import external  # noqa: F401,I001
from .registry import (
    InputTooSmallError,
    ModelSpec,
    UnknownModelError,
    build_model,
    get_model_spec,
    input_side,
    list_models,
    register_model,
)

__all__ = [
    "InputTooSmallError",
    "ModelSpec",
    "UnknownModelError",
    "build_model",
    "get_model_spec",
    "input_side",
    "list_models",
    "register_model",
]
