"""Where the Hydra config tree lives, and composing it outside ``@hydra.main``.

The tree is the top-level ``conf/`` of the repository. A source checkout or an editable install reads
it in place; a wheel (``pip install .``) ships the same files as the package ``cnnbench.conf``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

PRIMARY_CONFIG = "train"


def config_dir() -> Path:
    """Absolute path of the config tree (the folder holding ``train.yaml``)."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / f"{PRIMARY_CONFIG}.yaml").is_file():
        return checkout
    installed = Path(str(resources.files("cnnbench.conf")))
    if (installed / f"{PRIMARY_CONFIG}.yaml").is_file():
        return installed
    raise FileNotFoundError(f"cnnbench's config tree was not found in {checkout} nor in {installed}")


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """Compose ``train.yaml`` with Hydra overrides, as ``cnnbench train`` would, without running.

    Inside a running ``cnnbench train`` job Hydra is already initialized with this config tree, and a
    second initialization is refused: compose with it as it is.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=PRIMARY_CONFIG, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(
            config_name=PRIMARY_CONFIG,
            overrides=list(overrides),
            return_hydra_config=return_hydra_config,
        )
