"""Untrusted files run no code (issue 11 item 8): a run dir, checkpoint or export handed to
lmlab-eval, lmlab-predict, resume= or model.name_or_path= is data. Both attacks of the issue
are reproduced on a tiny trained run: a checkpoint whose stored config sets
model.config.trust_remote_code=true and points at a directory of Python code, and an export
whose lmlab.json names a `_target_` module. Each marker file below is written only if the
attacker's code runs; every refusal is one line. Also: exports and caches get the user's
umask, not 0700."""

import json
import os
import shutil
import stat
import sys

import pytest
import torch

from lmlab.build import compose, train
from lmlab.cli import eval as lmlab_eval
from lmlab.cli import predict as lmlab_predict
from lmlab.errors import LmlabError
from lmlab.stored import locate

EVIL_TYPE = "lmlab_evil_test"


@pytest.fixture(scope="module", autouse=True)
def lmlab_env(lmlab_cache_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
        mp.setenv("LMLAB_OUTPUT_DIR", str(tmp_path_factory.mktemp("outputs")))
        # were the attack to succeed, transformers would copy the code here, not to ~/.cache
        mp.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf-modules")))
        yield


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory, tiny_overrides):
    """A 2-step CLM run: run dir, export and a checkpoint."""
    run_dir = tmp_path_factory.mktemp("clm") / "run"
    overrides = ["experiment=quickstart", "model=gpt_tiny", *tiny_overrides("gpt2", steps=2)]
    overrides.append("keep_checkpoints=true")
    train(compose(overrides, run_dir=str(run_dir)))
    return run_dir


def _checkpoint(run_dir):
    return sorted((run_dir / "checkpoints").glob("*.ckpt"))[0]


def _evil_code(folder, marker) -> str:
    """Python that, if ever imported, writes `marker`."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"


@pytest.fixture
def code_dir(clm_run, tmp_path):
    """A 'model' directory as an attacker would make it: the run's own tokenizer (which loads
    as usual), a config of an unknown model_type whose config and model classes are Python
    files (auto_map), each writing the marker when imported."""
    folder, marker = tmp_path / "evil_model", tmp_path / "marker"
    folder.mkdir()
    for file in (clm_run / "export").iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(file, folder)
    for name in ("configuration_evil", "modeling_evil"):
        (folder / f"{name}.py").write_text(_evil_code(folder, marker))
    auto_map = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps({"model_type": EVIL_TYPE, "auto_map": auto_map}))
    return folder, marker


@pytest.fixture
def crafted_checkpoint(clm_run, code_dir, tmp_path):
    """The run's checkpoint, its stored config pointing at code_dir with trust_remote_code."""
    folder, marker = code_dir
    ckpt = torch.load(_checkpoint(clm_run), map_location="cpu", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    config["model"]["name_or_path"] = str(folder)
    config["model"]["model_type"] = EVIL_TYPE
    config["model"]["config"]["trust_remote_code"] = True
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    return path, marker


@pytest.fixture
def crafted_export(clm_run, tmp_path, monkeypatch):
    """A copy of the run's export whose lmlab.json names a module on sys.path that writes the
    marker when imported."""
    export = tmp_path / "export"
    shutil.copytree(clm_run / "export", export)
    marker, modules = tmp_path / "marker", tmp_path / "modules"
    modules.mkdir()
    (modules / "lmlab_evil_target.py").write_text(
        _evil_code(modules, marker) + "class Objective:\n    head = 'AutoModelForCausalLM'\n"
    )
    monkeypatch.syspath_prepend(str(modules))
    task = json.loads((export / "lmlab.json").read_text())
    task["objective"]["_target_"] = "lmlab_evil_target.Objective"
    (export / "lmlab.json").write_text(json.dumps(task))
    return export, marker


def _refused(main, argv, capsys) -> str:
    """Runs a CLI main that must refuse: exit 2 and a one-line error, which is returned."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "error" in err[0] and "Traceback" not in err[0]
    return err[0]


# ---------------------------------------------------------------- attack 1: trust_remote_code


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_checkpoint_with_trust_remote_code_runs_no_code(command, crafted_checkpoint, capsys):
    path, marker = crafted_checkpoint
    if command == "eval":
        line = _refused(lmlab_eval.main, [path], capsys)
    else:
        line = _refused(lmlab_predict.main, [path, "the cat"], capsys)
    assert not marker.exists(), "the checkpoint's Python ran"
    assert str(path) in line and "trust_remote_code" in line and "nothing ran" in line


def test_stored_trust_remote_code_is_dropped_with_one_line(clm_run, tmp_path, capsys):
    """Set in a stored config for a model without code of its own: dropped, one warning."""
    from lmlab.stored import task_config

    ckpt = torch.load(_checkpoint(clm_run), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"]["config"]["trust_remote_code"] = True
    path = tmp_path / "trusting.ckpt"
    torch.save(ckpt, path)
    stored = locate(path)
    assert stored.asked_trust and "trust_remote_code" not in stored.trained.model.config
    cfg = task_config(stored, run_dir=str(tmp_path))
    assert "trust_remote_code" not in cfg.model.config
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 1 and "model.config.trust_remote_code" in warnings[0]
    assert "ignored" in warnings[0] and "command line" in warnings[0]
    # given on the command line, it is passed on (and models.load_or_create warns)
    cfg = task_config(stored, ["++model.config.trust_remote_code=true"], run_dir=str(tmp_path))
    assert cfg.model.config.trust_remote_code is True


def test_model_name_or_path_with_code_is_refused_without_trust(code_dir):
    from omegaconf import OmegaConf

    from lmlab.models import load_or_create

    folder, marker = code_dir
    cfg = OmegaConf.create({"name_or_path": str(folder), "config": {}, "attention_dropout": None})
    with pytest.raises(LmlabError) as e:
        load_or_create(cfg, "AutoModelForCausalLM", tokenizer=None)
    assert "model.name_or_path" in str(e.value) and "trust_remote_code" in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_training_from_a_model_dir_with_code_runs_no_code(code_dir, tmp_path, tiny_overrides):
    """lmlab-train model.name_or_path=<dir with code>: one line, before any model is built."""
    folder, marker = code_dir
    overrides = ["experiment=quickstart", "model=gpt_tiny", *tiny_overrides("gpt2", steps=2)]
    cfg = compose([*overrides, f"model.name_or_path={folder}"], run_dir=str(tmp_path / "run"))
    with pytest.raises(LmlabError) as e:
        train(cfg)
    assert "model.name_or_path" in str(e.value) and "trust_remote_code" in str(e.value)
    assert "\n" not in str(e.value) and not marker.exists()


def test_trust_remote_code_from_the_command_line_is_obeyed_with_a_warning(
    code_dir, tmp_path, monkeypatch, capsys
):
    """The user's own choice: passed on to transformers (which then runs the code)."""
    import transformers.dynamic_module_utils as dynamic
    from omegaconf import OmegaConf

    from lmlab.models import load_or_create

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    folder, marker = code_dir
    trusting = {"trust_remote_code": True}
    cfg = OmegaConf.create({"name_or_path": str(folder), "config": trusting})
    with pytest.raises(Exception):  # noqa: B017  (the attacker's files define no real model)
        load_or_create(cfg, "AutoModelForCausalLM", tokenizer=None)
    assert marker.exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "trust_remote_code=true" in warnings[0]
    assert str(folder) in warnings[0]


# ---------------------------------------------------------------- attack 2: _target_


def test_export_naming_a_target_module_imports_nothing(crafted_export, capsys):
    export, marker = crafted_export
    line = _refused(lmlab_predict.main, [export, "the cat"], capsys)
    assert not marker.exists() and "lmlab_evil_target" not in sys.modules
    assert "_target_" in line and "lmlab_evil_target.Objective" in line
    assert "lmlab.json" in line


def test_eval_of_an_export_naming_a_target_module_imports_nothing(
    crafted_export, capsys, tiny_text_file
):
    export, marker = crafted_export
    _refused(lmlab_eval.main, [export, f"data={tiny_text_file}"], capsys)
    assert not marker.exists() and "lmlab_evil_target" not in sys.modules


def test_run_dir_config_naming_a_target_module_imports_nothing(clm_run, tmp_path, capsys):
    """A run dir's export is read through its lmlab.json, its config.yaml as data."""
    run = tmp_path / "run"
    shutil.copytree(clm_run, run)
    task = json.loads((run / "export" / "lmlab.json").read_text())
    task["objective"]["_target_"] = "os.system"
    (run / "export" / "lmlab.json").write_text(json.dumps(task))
    line = _refused(lmlab_predict.main, [run, "the cat"], capsys)
    assert "os.system" in line


def test_export_whose_config_names_code_is_refused(clm_run, code_dir, tmp_path, capsys):
    """An export whose config.json maps the model to its own Python (auto_map)."""
    folder, marker = code_dir
    export = tmp_path / "export"
    shutil.copytree(clm_run / "export", export)
    for file in folder.glob("*.py"):
        shutil.copy(file, export)
    config = json.loads((export / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (export / "config.json").write_text(json.dumps(config))
    line = _refused(lmlab_predict.main, [export, "the cat"], capsys)
    assert not marker.exists()
    assert "auto_map" in line and "config.json" in line


def test_objective_class_resolves_only_lmlab_objectives():
    from lmlab.objectives.clm import CausalLM
    from lmlab.stored import objective_class

    assert objective_class("lmlab.objectives.clm.CausalLM", "x") is CausalLM
    for target in [
        "os.system",
        "lmlab.objectives.base.Objective",  # abstract: not an objective of a run
        "lmlab.objectives.generation.generate",
        "lmlab.objectives.nope.Nope",  # would be an import of a module the file names
        "lmlab.run.train",
        "lmlab.objectives.clm.CausalLM.__init__",
    ]:
        with pytest.raises(LmlabError, match="not one of lmlab's objectives"):
            objective_class(target, "stored.json")


def test_interpolations_in_stored_configs_are_refused(clm_run, tmp_path, capsys):
    """${package_model:...} would import a module; ${oc.env:...} would read the environment:
    a stored config's values are plain data."""
    ckpt = torch.load(_checkpoint(clm_run), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"]["name_or_path"] = "${package_model:antigravity}"
    path = tmp_path / "interpolated.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(LmlabError, match=r"model.name_or_path.*\$\{package_model"):
        locate(path)
    assert "antigravity" not in sys.modules


def test_pickled_checkpoint_runs_no_code(tmp_path, clm_run):
    """A checkpoint holding a Python object whose unpickling would run code: lmlab-eval,
    lmlab-predict (through locate) and resume= (through Lightning) never unpickle it."""
    marker = tmp_path / "marker"
    path = tmp_path / "pickled.ckpt"
    torch.save({"hyper_parameters": {"config": Payload(marker)}, "state_dict": {}}, path)
    with pytest.raises(LmlabError) as e:
        locate(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not marker.exists()


def test_resume_from_a_pickled_checkpoint_runs_no_code(tmp_path, tiny_overrides, monkeypatch):
    """resume= hands the file to Lightning, which must read it as plain data too, even where
    the user's environment turns torch.load's default back to unpickling anything."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "loops": Payload(marker)}, path)
    overrides = ["experiment=quickstart", "model=gpt_tiny", *tiny_overrides("gpt2", steps=2)]
    with pytest.raises(Exception):  # noqa: B017  (what matters: it stops, and nothing ran)
        train(compose([*overrides, f"resume={path}"], run_dir=str(tmp_path / "run")))
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda ckpt: ckpt.pop("hyper_parameters"),
        lambda ckpt: ckpt["hyper_parameters"]["config"].pop("objective"),
        lambda ckpt: ckpt["hyper_parameters"]["config"]["data"].update(max_length="${oc.env:HOME}"),
        lambda ckpt: ckpt["hyper_parameters"]["config"]["objective"].update(name="../../x"),
    ],
)
def test_malformed_stored_checkpoints_are_one_line(clm_run, tmp_path, damage):
    ckpt = torch.load(_checkpoint(clm_run), map_location="cpu", weights_only=True)
    damage(ckpt)
    path = tmp_path / "damaged.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(LmlabError) as e:
        locate(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_malformed_stored_run_dir_files_are_one_line(clm_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clm_run, run)
    (run / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(LmlabError, match="config.yaml: not a valid config"):
        locate(run)
    shutil.copy(clm_run / "config.yaml", run / "config.yaml")
    (run / "export" / "lmlab.json").write_text(json.dumps({"objective": {}, "max_length": "x"}))
    with pytest.raises(LmlabError, match="lmlab.json: max_length 'x'; expected an integer"):
        locate(run)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- permissions


def test_exports_and_caches_get_the_users_umask(clm_run, lmlab_cache_dir, tmp_path):
    from lmlab.fileutil import write_dir

    old = os.umask(0o022)
    try:
        made = write_dir(tmp_path / "folder", lambda tmp: (tmp / "f").write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(made.stat().st_mode) == 0o755
    for folder in [clm_run / "export", *lmlab_cache_dir.rglob("*")]:
        if folder.is_dir():
            mode = stat.S_IMODE(folder.stat().st_mode)
            assert mode & 0o077 == 0o777 & ~old & 0o077, (folder, oct(mode))
