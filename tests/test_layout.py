"""The layout: imports flow one way through the package, the Hub files stand alone, the installed package holds
the library and nothing of the lab (`experiments/`), scripts stay thin and never import each other."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_mdlm"
HUB_FILES = ("configuration_mdlm", "modeling_mdlm", "generation_mdlm")
# Lower layers first: a module may import its own layer (its own subpackage) and layers below it, never above.
LAYERS = [
    set(HUB_FILES),
    {"visualization"},  # watching the sampler: needs only generation_mdlm
    {"cli"},  # the scripts' argument parsers (the converter's too)
    {"memory"},  # parameter counts and memory estimates: needs only the config
    {"tokenization"},
    {"data"},
    {"training"},
    {"hub"},
    {"convert"},
    {"evaluation"},
    {"loading"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield path, parts[:-1] if parts[-1] == "__init__" else parts, parts[-1] == "__init__"


def _imports(path, name, is_package):
    """Absolute names of the hf_mdlm modules that `path` imports (relative imports resolved)."""
    package = name if is_package else name[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + tuple(node.module.split(".")) if node.module else base
            else:
                target = tuple((node.module or "").split("."))
            if target[0] == "hf_mdlm":
                yield target, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hf_mdlm":
                    yield tuple(alias.name.split(".")), []


def test_every_module_has_a_layer():
    assert {name[1] for _, name, _ in _modules() if len(name) > 1} == set(RANK)


def test_imports_flow_one_way():
    wrong = []
    for path, name, is_package in _modules():
        if len(name) == 1:  # hf_mdlm/__init__.py: lazy exports only
            continue
        for target, names in _imports(path, name, is_package):
            if len(target) == 1:  # the package root: only its version
                if names != ["__version__"]:
                    wrong.append(f"{'.'.join(name)} imports {names} from hf_mdlm itself")
                continue
            if target[1] == name[1]:  # within one subpackage: never a name from its own __init__ (modules are fine)
                submodules = all((ROOT.joinpath(*target) / f"{n}.py").exists() for n in names)
                if not is_package and len(name) > 2 and target == name[:2] and not submodules:
                    wrong.append(f"{'.'.join(name)} imports its own package {'.'.join(target)}")
                continue
            if RANK[target[1]] > RANK[name[1]] or (RANK[target[1]] == RANK[name[1]] and RANK[name[1]] != 0):
                wrong.append(f"{'.'.join(name)} (layer {RANK[name[1]]}) imports {'.'.join(target)} "
                             f"(layer {RANK[target[1]]})")
    assert wrong == []


def test_hub_files_import_only_torch_transformers_and_each_other():
    allowed_roots = {"torch", "transformers", "copy", "inspect", "math", "dataclasses", "typing", "collections",
                     "functools", "warnings", "operator", "numbers", "tqdm"}  # tqdm: a dependency of transformers
    for stem in HUB_FILES:
        tree = ast.parse((PACKAGE / f"{stem}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in HUB_FILES, (stem, node.module)
            elif isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] in allowed_roots, (stem, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed_roots for a in node.names), stem


def test_public_names_import_and_no_alias_module_is_left():
    import hf_mdlm

    for name in hf_mdlm.__all__:
        assert getattr(hf_mdlm, name) is not None
    assert hf_mdlm.MDLMTrainingArguments.__module__ == "hf_mdlm.training.arguments"
    for old in ("losses", "noise", "trainer", "lm_eval_harness", "replication"):  # old paths of a 0.x library
        assert not (PACKAGE / f"{old}.py").exists() and not (PACKAGE / old).exists(), old
    data = importlib.import_module("hf_mdlm.data")
    assert not hasattr(data, "build_canvases") and not hasattr(data, "__getattr__")


def test_no_page_or_template_names_an_old_path():
    old_paths = ("hf_mdlm.lm_eval_harness", "hf_mdlm.losses", "hf_mdlm.noise", "hf_mdlm.trainer",
                 "hf_mdlm.replication", "examples/replicate.py", "examples/a2d_experiment.py", "bench/data/",
                 "bench/judge_study.py", "bench/eos_study.py")
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(PACKAGE / "hub" / "templates").glob("*.md"),
             *PACKAGE.rglob("*.py"), *(ROOT / "examples").glob("*.py"), *(ROOT / "experiments").glob("*.py")]
    stale = [f"{page.relative_to(ROOT)}: {old}" for page in pages for old in old_paths if old in page.read_text()]
    assert stale == []


def test_python_dash_m_convert_still_runs():
    result = subprocess.run([sys.executable, "-m", "hf_mdlm.convert", "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0 and "llada" in result.stdout


def test_examples_are_thin_and_import_no_example():
    for script in sorted((ROOT / "examples").glob("*.py")):
        text = script.read_text()
        assert len(text.splitlines()) <= 160, f"{script.name} has {len(text.splitlines())} lines"
        assert "sys.path" not in text and "spec_from_file_location" not in text, script.name
        tree = ast.parse(text)
        siblings = {p.stem for p in (ROOT / "examples").glob("*.py")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & siblings, script.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in siblings, script.name


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_templates_and_the_bundled_corpus(tmp_path):
    """A plain install trains on the bundled corpus and renders model cards: the files are package data. And the
    wheel holds the library alone: nothing of experiments/, bench/, examples/ or tests/."""
    import shutil
    import tarfile
    import zipfile

    source = tmp_path / "src"  # build from a copy of the checkout: the build leaves no build/ folder in it
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "fixtures", "results")
    for folder in ("hf_mdlm", "experiments", "bench", "examples", "tests"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = tmp_path.glob("hf_mdlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {"hf_mdlm/hub/templates/model_card.md", "hf_mdlm/hub/templates/adapter_card.md",
              "hf_mdlm/data/bundled/shakespeare_train.jsonl.gz", "hf_mdlm/data/bundled/shakespeare_heldout.jsonl.gz",
              "hf_mdlm/data/bundled/tokenizer/tokenizer.json", "hf_mdlm/data/bundled/tokenizer/tokenizer_config.json"}
    assert needed <= names
    outside = sorted(n for n in names if not n.startswith(("hf_mdlm/", "hf_mdlm-")))
    assert outside == [] and not any("replication" in n or "experiment" in n for n in names)
    result = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; "
                             f"print(b.build_sdist({str(tmp_path)!r}))"], capture_output=True, text=True, cwd=source)
    assert result.returncode == 0, result.stderr[-2000:]
    sdist = tmp_path / result.stdout.strip().splitlines()[-1]
    members = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert needed <= members


def test_test_files_mirror_the_package():
    """A test file per module or subpackage, named after it (`test_<module>.py`, `test_<subpackage>_<module>.py`),
    plus the scripts' folders, the pages and this file: never a file named after an issue."""
    modules = {name[1].removesuffix("_mdlm") for _, name, _ in _modules() if len(name) > 1}
    modules |= {f"{name[1]}_{name[2]}" for _, name, _ in _modules() if len(name) > 2}
    allowed = modules | {"examples", "bench", "experiments", "docs", "layout"}
    stray = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if p.stem.removeprefix("test_") not in allowed]
    assert stray == []
