"""The pages (README.md, docs/*.md, experiments/README.md): every shell command they show names a script that exists
and only flags that its parser has, and every relative link points to a file."""

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]


def shell_commands(text: str):
    """The commands of the page's ```bash blocks (continuation lines joined, comments and `[...]` brackets of
    optional flags dropped), one per `&&`/`;`/`|` part."""
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).replace("[", " ").replace("]", " ").strip()
            for part in re.split(r"&&|;|\|", line):
                if part.strip():
                    yield part.strip()


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(target: str) -> argparse.ArgumentParser:
    """The argparse parser a script (a path) or a module (`-m name`) builds, caught when its main() first parses."""
    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"docs_script_{Path(target).stem}", ROOT / target)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses of the script look themselves up there
        with _path(str((ROOT / target).parent)):
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
        if not hasattr(module, "main"):
            module = importlib.import_module(f"{target}.cli")  # a package run by its __main__
    original, argv = argparse.ArgumentParser.parse_known_args, sys.argv
    argparse.ArgumentParser.parse_known_args = capture
    sys.argv = [target]
    try:
        module.main([]) if inspect.signature(module.main).parameters else module.main()
    except _Captured as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_known_args, sys.argv = original, argv
    raise AssertionError(f"{target}: main() never parsed its arguments")


@contextlib.contextmanager
def _path(folder):
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def accepted_flags(parser: argparse.ArgumentParser, words: list[str]) -> set[str]:
    """The option strings the parser takes, with those of the sub-command named in `words` (or of every
    sub-command when none is named: lm_eval inserts `run` by itself)."""
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            named = [action.choices[w] for w in words if w in action.choices]
            for sub in named[:1] or action.choices.values():
                flags |= accepted_flags(sub, words)
    return flags


def launched(words: list[str]):
    """(target, flags before it, flags after it) of `python X.py ...`, `python -m M ...` or `accelerate launch`."""
    if words[:2] == ["accelerate", "launch"]:
        if "-m" in words:  # a module
            module = words.index("-m")
            return words[module + 1], words[2:module], words[module + 2:]
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        return words[script], words[2:script], words[script + 1:]
    if words[0] in ("python", "python3"):
        if words[1] == "-m":
            return words[2], [], words[3:]
        return words[1], [], words[2:]
    return None


def documented_calls():
    calls = []
    for page in PAGES:
        for command in shell_commands(page.read_text()):
            # values such as pretrained=DIR and leading VAR=value settings are no flags
            words = [w for w in shlex.split(command) if "=" not in w or w.startswith("-")]
            call = launched(words) if words else None
            if call is not None:
                calls.append((page.relative_to(ROOT).as_posix(), command, *call))
    return calls


CALLS = documented_calls()


def test_the_pages_show_commands():
    scripts = {target for _, _, target, _, _ in CALLS}
    assert {"examples/finetune.py", "examples/generate.py", "examples/evaluate.py", "examples/push_to_hub.py",
            "experiments/replicate.py", "hf_mdlm.convert"} <= scripts


@pytest.mark.parametrize("target", sorted({call[2] for call in CALLS}))
def test_every_documented_flag_exists(target):
    parser = parser_of(target)
    if target.endswith(".py"):
        assert (ROOT / target).is_file(), target
    wrong = []
    for page, command, _, launcher_flags, words in (c for c in CALLS if c[2] == target):
        flags = accepted_flags(parser, words)
        for word in words:
            if word.startswith("--") and word.split("=")[0] not in flags:
                wrong.append(f"{page}: {word.split('=')[0]} in `{command}`")
        if launcher_flags:
            from accelerate.commands.launch import launch_command_parser

            known = set(launch_command_parser()._option_string_actions)
            wrong += [f"{page}: accelerate launch {w}" for w in launcher_flags if w.startswith("--") and w not in known]
            for config in (launcher_flags[i + 1] for i, w in enumerate(launcher_flags) if w == "--config_file"):
                if not (ROOT / config).is_file():
                    wrong.append(f"{page}: no config file {config}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_catches_a_flag_the_script_lacks():
    parser = parser_of("examples/generate.py")
    assert "--steps" in accepted_flags(parser, []) and "--visualise_everything" not in accepted_flags(parser, [])
    assert list(shell_commands("```bash\npython a.py --x 1 \\\n    --y 2   # note --z\n```\n")) == [
        "python a.py --x 1      --y 2"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(page):
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target and not (page.parent / target).exists():
            missing.append(target)
    assert not missing, missing


def test_argument_dataclasses_document_every_field_by_group():
    import dataclasses

    from hf_mdlm.data.arguments import DataArguments
    from hf_mdlm.loading import ModelArguments
    from hf_mdlm.training.arguments import MDLMTrainingArguments

    own = {f.name for f in dataclasses.fields(MDLMTrainingArguments)} - {
        f.name for f in dataclasses.fields(MDLMTrainingArguments.__mro__[1])} | {"remove_unused_columns"}
    for cls, names in ((DataArguments, {f.name for f in dataclasses.fields(DataArguments)}),
                       (ModelArguments, {f.name for f in dataclasses.fields(ModelArguments)}),
                       (MDLMTrainingArguments, own)):
        documented = set(re.findall(r"^        (\w+) \(`", cls.__doc__, flags=re.M))
        assert documented == names, (cls.__name__, names ^ documented)
        assert "        > " in cls.__doc__, cls.__name__  # grouped


def test_every_test_a_page_cites_exists():
    """The guarantees table (docs/hub.md) names the test behind each promise: each must exist (`::name` alone
    continues the file named before it in the same cell)."""
    missing = []
    for page in PAGES:
        for cell in page.read_text().split("|"):
            current = None
            for ref in re.findall(r"`((?:test_\w+\.py)?)::(\w+)`", cell):
                current = ref[0] or current
                if current is None or f"def {ref[1]}(" not in (ROOT / "tests" / current).read_text():
                    missing.append(f"{page.name}: {current}::{ref[1]}")
    assert not missing, missing
