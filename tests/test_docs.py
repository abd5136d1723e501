"""docs/architecture.md matches the code: every module path and dotted name it gives exists."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def test_every_module_path_in_the_architecture_page_exists():
    paths = set(re.findall(r"lmlab/[\w/]*\w(?:\.py)?/?", ARCHITECTURE))
    paths |= {f"lmlab/{p}" for p in re.findall(r"(?<![\w/])(cli/\w+\.py)", ARCHITECTURE)}
    assert len(paths) > 30  # the regexes still find the page's paths
    missing = sorted(p for p in paths if not (ROOT / "src" / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def resolve(dotted: str):
    """The object a dotted name such as lmlab.run.train stands for."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_dotted_name_in_the_architecture_page_exists():
    names = set(re.findall(r"\blmlab(?:\.\w+)+", ARCHITECTURE))
    assert {"lmlab.run.train", "lmlab.experiment.compose"} <= names
    for name in sorted(names):
        resolve(name)  # raises, naming it, when the page is out of date


def test_every_module_function_named_in_the_architecture_page_exists():
    """`run.load`, `sweeps.write_status` and the like, where `run` is a module of lmlab."""
    pairs = set(re.findall(r"\b(\w+)\.(\w+)\b", ARCHITECTURE))
    named = {f"lmlab.{m}.{a}" for m, a in pairs if (ROOT / "src" / "lmlab" / f"{m}.py").is_file()}
    assert {"lmlab.run.load", "lmlab.sweeps.write_status"} <= named
    for name in sorted(named - {f"lmlab.{m}.py" for m, _ in pairs}):
        resolve(name)
