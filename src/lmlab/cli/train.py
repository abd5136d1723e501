"""lmlab-train: compose model x objective x data x trainer with Hydra, then train.

Imports only Hydra and the schemas at start-up, so `--help` and `--cfg job` stay fast;
torch, transformers and lightning are imported when a run starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lmlab.config import config_dir, validate
from lmlab.errors import LmlabError


def expand_data_path(args: list[str]) -> list[str]:
    """`data=<file, dir or glob>` is shorthand for `data=files data.train=<it>`."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        is_preset = (config_dir() / "data" / f"{value}.yaml").exists()
        if key == "data" and not is_preset and (Path(value).exists() or set("*?/") & set(value)):
            out += ["data=files", f"data.train={value}"]
        else:
            out.append(arg)
    return out


def fail(error: Exception) -> None:
    print(f"lmlab-train: error: {error}", file=sys.stderr)
    sys.exit(2)


def run(cfg: DictConfig):
    """The Hydra task: returns the metric a sweeper optimises (objective.monitor)."""
    try:
        validate(cfg)  # cheap checks before the heavy imports
        from lmlab.build import train

        metrics = train(cfg)
    except LmlabError as e:
        fail(e)
    if "export" in metrics:
        print(f"export: {metrics['export']}")
    if "sample" in metrics:
        print(f"sample: {metrics['sample']}")
    return metrics.get(cfg.objective.monitor)


def main() -> None:
    sys.argv = [sys.argv[0], *expand_data_path(sys.argv[1:])]
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
