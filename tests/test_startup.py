"""lmlab-train's start-up stays light: printing a config or reporting a bad key imports none
of the heavy libraries (benchmarks/startup.py measures the time), and `--cfg` prints the
config Hydra would print, composed once."""

import json
import os
import subprocess
import sys

import pytest

HEAVY = (
    "torch", "transformers", "pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics",
    "datasets", "tokenizers", "safetensors", "accelerate", "peft", "matplotlib", "optuna",
    "sqlalchemy", "pandas", "scipy", "sklearn",
)  # fmt: skip

# main() in a fresh interpreter; prints its exit code, the heavy modules it loaded (sorted)
# and how many times a config was composed
PROBE = f"""
import json, sys
from hydra._internal import config_loader_impl as loader
composed = []
original = loader.ConfigLoaderImpl.load_configuration
def counted(self, *args, **kwargs):
    composed.append(1)
    return original(self, *args, **kwargs)
loader.ConfigLoaderImpl.load_configuration = counted
sys.argv = ["lmlab-train", *json.loads(sys.argv[1])]
import lmlab.cli.train
code = 0
try:
    lmlab.cli.train.main()
except SystemExit as e:
    code = e.code or 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print("PROBE", json.dumps({{"code": code, "heavy": heavy, "composed": len(composed)}}))
"""


def probe(args, tmp_path):
    """(PROBE's result, the process) of lmlab-train `args` run in tmp_path, its outputs in
    tmp_path/outputs. Also used by test_cli.py."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"LMLAB_OUTPUT_DIR": str(tmp_path / "outputs"), "LMLAB_CACHE_DIR": str(tmp_path / "c")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr  # main() raised something other than SystemExit
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE ") :]), proc


@pytest.mark.parametrize(
    "args, code",
    [
        (["--cfg", "job"], 0),
        (["--cfg", "job", "--resolve", "experiment=finetune_sentiment"], 0),
        (["--cfg", "all", "hparams_search=finetune_optuna"], 0),
        (["experiment=quickstart", "objective.lrr=1"], 2),
        (["hparams_search=pretrain_optuna", "model.config.n_layerz=2"], 2),
        (["-m", "--cfg", "job"], 2),
    ],
)
def test_printing_a_config_or_a_bad_key_imports_nothing_heavy(args, code, tmp_path):
    result, proc = probe(args, tmp_path)
    assert result["heavy"] == [], proc.stderr
    assert result["code"] == code, proc.stderr
    if "--cfg" in args and code == 0:
        assert result["composed"] == 1  # once, by the precheck, which also prints it
    assert "Traceback" not in proc.stderr


def test_cfg_job_prints_what_hydra_prints(tmp_path):
    """The precheck prints with Hydra's own printer: the same text as Hydra's --cfg."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from lmlab.config import config_dir

    args = ["experiment=quickstart", "trainer.max_steps=7"]
    _, proc = probe(["--cfg", "job", "-p", "trainer", *args], tmp_path)
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="train"):
        cfg = GlobalHydra.instance().hydra.compose_config("train", args, run_mode=RunMode.RUN)
    assert proc.stdout.startswith("# @package trainer\n")
    assert proc.stdout.split("\n", 1)[1].split("PROBE")[0] == OmegaConf.to_yaml(cfg.trainer)
    assert "max_steps: 7" in proc.stdout
