"""Tests of `hf_mdlm/hub/`: export_for_hub, check_hub_folder, push_to_hub and the model cards; the saved folder is a
self-contained Hub model that loads with trust_remote_code where hf_mdlm is not installed; a run's output folder is
refused when it holds other files or another run, and its final save is staged. No network: HfApi's methods are
replaced by recorders, and the subprocesses read an offline HF cache."""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from conftest import ADAPTER_REPO, BASE_REPO, EVAL_RESULTS, FULL_FILES, REPO, TOKEN, TRAINER_STATE
from conftest import tiny_config, tiny_model_for
from example_scripts import TINY, example
from hub_cache import COMMIT, first_python_block, install_in_hf_cache, last_json_line, run_without_hf_mdlm

from hf_mdlm import MDLMForMaskedLM
from hf_mdlm.hub import check_hub_folder, export_for_hub, hub_files, push_to_hub, save_run_record

ROOT = Path(__file__).resolve().parent.parent


def files_containing(folder, text):
    return [p.name for p in Path(folder).rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def expected_print(model, tokenizer, prompt="Once upon a time"):
    """What the card's snippet prints, computed in this process."""
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=16,
                            steps=16, temperature=0.0)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------------------


def test_exported_model_folder_passes_the_checks_and_carries_the_run(exported, training_args):
    folder = exported.folder
    assert hub_files(folder) == FULL_FILES
    assert check_hub_folder(folder) == []
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM"}
    saved_args = json.loads((folder / "training_args.json").read_text())
    assert saved_args["ctc_weight"] == 0.5 and saved_args["hub_token"] == "<HUB_TOKEN>"
    run_info = json.loads((folder / "run_info.json").read_text())
    assert run_info["world_size"] == 1
    assert run_info["hardware"] == ("CPU" if training_args.device.type == "cpu" else
                                    f"{torch.cuda.get_device_name(training_args.device)} (cuda)")
    assert set(run_info["versions"]) >= {"hf_mdlm", "torch", "transformers"}
    assert files_containing(folder, TOKEN) == []


def test_card_metadata_and_facts(exported):
    card = ModelCard.load(exported.folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0"
    assert data["datasets"] == ["org/tiny-data"]
    assert data["tags"] == ["masked-diffusion", "custom_code", "hf_mdlm", "slack-ctc"]
    assert "base_model" not in data
    text = card.text
    hardware = json.loads((exported.folder / "run_info.json").read_text())["hardware"]
    for fact in ("2.3456", "1.5012", "0.8444", "1.2345", "0.7111", "2.6789", "2.7123",  # final logged losses
                 "| CE weight (`ce_weight`) | 1 |", "| slack-CTC weight (`ctc_weight`) | 0.5 |", "bernoulli / 0.2",
                 "cosine (0.001)", "| Loss normalisation | masked |", "4 × 2 × 1 = 8", f"| Hardware | {hardware} |",
                 "30 (max_steps 30, epochs 1.5)", "12m 34s", "`[MASK]` (id 3)", "`<slack>` (id 4)",
                 "| held_out.accuracy | 0.375 |", f'repo = "{REPO}"', "skip_special_tokens=True",
                 "`<slack>` is never proposed (`suppress_slack=True`)"):
        assert fact in text, fact
    assert "model.generate(" in first_python_block(exported.folder / "README.md")


def test_slack_ctc_tag_only_with_a_ctc_loss_and_missing_facts_say_not_recorded(exported, tokenizer, tmp_path):
    baseline = export_for_hub(exported.model, tokenizer, tmp_path / "baseline", repo_id=REPO,
                              training_args={"ce_weight": 1.0, "ctc_weight": 0.0}, base_model="org/pretrained")
    data = ModelCard.load(baseline / "README.md").data.to_dict()
    assert "slack-ctc" not in data["tags"] and "masked-diffusion" in data["tags"]
    assert data["base_model"] == "org/pretrained"
    text = ModelCard.load(baseline / "README.md").text
    assert "| Slack rule / probability | not recorded / not recorded |" in text
    assert "**Final logged losses**\n\nnot recorded" in text
    assert "| Hardware | not recorded |" in text
    # no training records at all (a converted checkpoint): the card does not claim a training run
    bare = export_for_hub(exported.model, tokenizer, tmp_path / "bare", repo_id=REPO)
    card = ModelCard.load(bare / "README.md")
    assert "slack-ctc" not in card.data.tags
    assert "No training records: hf_mdlm did not train this model" in card.text and "Trained with" not in card.text
    assert check_hub_folder(bare) == []


def test_export_from_a_saved_folder(exported, tokenizer, training_args, tmp_path):
    """A training output folder (weights, tokenizer, records, junk) exports to the same files, junk left out."""
    run = tmp_path / "run"
    exported.model.save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    (run / "trainer_state.json").write_text(json.dumps(TRAINER_STATE))
    save_run_record(training_args, run, data_args={"dataset": "org/tiny-data", "canvas_length": 48})
    torch.save({"x": 1}, run / "training_args.bin")
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-10" / "model.safetensors").write_bytes(b"junk")
    out = export_for_hub(run, None, tmp_path / "out", repo_id=REPO, eval_results=EVAL_RESULTS)
    assert hub_files(out) == FULL_FILES
    card = (out / "README.md").read_text()
    assert "2.3456" in card and "**Data**: `org/tiny-data`, canvas_length 48" in card
    with pytest.raises(FileExistsError):
        export_for_hub(run, None, out, repo_id=REPO)


def test_export_from_a_folder_of_links_as_in_the_hub_cache(exported, tokenizer, tmp_path):
    """A Hub cache snapshot holds relative links into blobs/: hard-linking the link itself left a dangling one (the
    export crashed, its staging folder left behind); the export holds the blob's bytes."""
    run, blobs = tmp_path / "snapshots" / "abc", tmp_path / "blobs"
    exported.model.save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    blobs.mkdir()
    weights = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").rename(blobs / "f00d")
    (run / "model.safetensors").symlink_to(Path("..", "..", "blobs", "f00d"))
    out = export_for_hub(run, None, tmp_path / "out", repo_id=REPO)
    assert (out / "model.safetensors").read_bytes() == weights and not (out / "model.safetensors").is_symlink()


def test_records_written_elsewhere_are_exported_without_tokens(exported, tokenizer, tmp_path):
    """Only this session's token was scanned for: a record holding another one (an older login) was uploaded."""
    run = tmp_path / "run"
    exported.model.save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    other = "hf_" + "Q" * 30
    (run / "training_args.json").write_text(json.dumps({"hub_token": other, "report_to": [f"see {other}"]}))
    out = export_for_hub(run, None, tmp_path / "out", repo_id=REPO)
    assert other not in (out / "training_args.json").read_text()
    assert json.loads((out / "training_args.json").read_text()) == {"hub_token": "<HUB_TOKEN>",
                                                                    "report_to": ["see <TOKEN>"]}


def test_a_killed_exports_leftovers_do_not_block_the_next(tmp_path):
    from hf_mdlm.hub import prepare_fresh_folder
    from hf_mdlm.hub.outputs import PROBE_PREFIX, STAGING_NAME

    out = tmp_path / "run-hub"
    (out / STAGING_NAME).mkdir(parents=True)
    (out / STAGING_NAME / "model.safetensors").write_bytes(b"half")
    (out / f"{PROBE_PREFIX}1234").write_text("")
    assert prepare_fresh_folder(out) == out and list(out.iterdir()) == []


@pytest.mark.slow
def test_card_snippets_run_where_hf_mdlm_is_not_installed(exported, adapter_exported, tokenizer, tmp_path):
    """The one subprocess: both cards' usage snippets, by repo id from an offline HF cache, print the text that
    the in-process models generate."""
    hf_home = tmp_path / "hf_home"
    install_in_hf_cache(exported.folder, REPO, hf_home)
    install_in_hf_cache(adapter_exported.base_folder, BASE_REPO, hf_home)
    adapter_cache = install_in_hf_cache(adapter_exported.folder, ADAPTER_REPO, hf_home)
    # An adapter repo has no config.json; a real download records that (a 404) as this marker, which
    # AutoTokenizer needs offline.
    marker = adapter_cache / ".no_exist" / COMMIT / "config.json"
    marker.parent.mkdir(parents=True)
    marker.touch()
    snippets = {"model": first_python_block(exported.folder / "README.md"),
                "adapter": first_python_block(adapter_exported.folder / "README.md")}
    (tmp_path / "snippets.json").write_text(json.dumps(snippets))
    code = f"""
        import contextlib, io, json
        printed = {{}}
        for name, snippet in json.load(open({str(tmp_path / 'snippets.json')!r})).items():
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(snippet, name, "exec"), {{"__name__": "__main__"}})
            printed[name] = buffer.getvalue()
        print(json.dumps(printed))
    """
    printed = last_json_line(run_without_hf_mdlm(code, cwd=tmp_path, env={"HF_HOME": str(hf_home)}))
    expected_model = expected_print(exported.model, tokenizer)
    expected_adapter = expected_print(adapter_exported.model, tokenizer)
    assert expected_model.strip() and expected_adapter.strip()
    assert printed == {"model": expected_model + "\n", "adapter": expected_adapter + "\n"}


def test_push_creates_the_repo_and_uploads_every_file_in_one_commit(exported, hub_calls, capsys):
    info = push_to_hub(exported.folder, REPO, private=True, token=TOKEN)
    assert info.repo_id == REPO
    assert [name for name, _, _ in hub_calls] == ["create_repo", "repo_info", "create_commit"]
    _, args, kwargs = hub_calls[0]
    assert args == (REPO,) and kwargs["private"] is True and kwargs["exist_ok"] is True
    _, args, kwargs = hub_calls[2]
    assert args == (REPO,)
    assert sorted(op.path_in_repo for op in kwargs["operations"]) == FULL_FILES
    assert kwargs["revision"] is None and kwargs["commit_message"]
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert files_containing(exported.folder, TOKEN) == []


def test_a_private_upload_never_goes_into_an_existing_public_repo(exported, hub_calls, monkeypatch):
    """create_repo(private=True, exist_ok=True) leaves an existing repository public: the files would be public."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "repo_info", lambda self, *a, **k: SimpleNamespace(private=False))
    with pytest.raises(ValueError, match=f"{REPO} already exists and is public: asked for a private upload"):
        push_to_hub(exported.folder, REPO, private=True, token=TOKEN)
    assert [name for name, _, _ in hub_calls] == ["create_repo"]  # nothing committed
    push_to_hub(exported.folder, REPO, token=TOKEN)  # without --private: the repository's visibility, as it is
    assert [name for name, _, _ in hub_calls][-1] == "create_commit"


def _drop_auto_map(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))


def _shift_special_ids(folder):
    config = json.loads((folder / "config.json").read_text())
    config["mask_token_id"], config["slack_token_id"] = 5, 6
    (folder / "config.json").write_text(json.dumps(config))


BREAKAGES = {
    "missing code file": (lambda f: (f / "modeling_mdlm.py").unlink(), "modeling_mdlm.py missing"),
    "bin weights": (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"),
                    "pytorch_model.bin: a pickle file"),
    "no tokenizer": (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
                     "no tokenizer files"),
    "no auto_map": (_drop_auto_map, "config.json has no auto_map"),
    "mismatched ids": (_shift_special_ids, "config.json mask_token_id=5 but the tokenizer's mask token '[MASK]' has id 3"),
    "token in a file": (lambda f: (f / "notes.txt").write_text(f"token: {TOKEN}"),
                        "notes.txt contains your Hugging Face token"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_folders_are_refused_before_any_network_call(exported, hub_calls, tmp_path, breakage):
    folder = tmp_path / "broken"
    shutil.copytree(exported.folder, folder)
    damage, message = BREAKAGES[breakage]
    damage(folder)
    with pytest.raises(ValueError) as error:
        push_to_hub(folder, REPO, token=TOKEN)
    assert message in str(error.value)
    assert TOKEN not in str(error.value)
    assert hub_calls == []
    if breakage == "mismatched ids":
        assert "config.json slack_token_id=6 but the tokenizer's <slack> has id 4" in str(error.value)


def test_every_problem_is_listed(exported, hub_calls, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(exported.folder, folder)
    for name in ("missing code file", "bin weights", "no auto_map", "mismatched ids"):
        BREAKAGES[name][0](folder)
    (folder / "generation_config.json").unlink()
    problems = check_hub_folder(folder)
    for name in ("missing code file", "bin weights", "no auto_map", "mismatched ids"):
        assert any(BREAKAGES[name][1] in p for p in problems), name
    assert any("no safetensors weights" in p for p in problems)
    assert any("generation_config.json missing" in p for p in problems)
    with pytest.raises(ValueError) as error:
        push_to_hub(folder, REPO, token=TOKEN)
    assert all(p in str(error.value) for p in problems)
    assert hub_calls == []


def test_adapter_export_reproduces_the_trained_model(adapter_exported, tokenizer):
    from peft import PeftModel

    folder = adapter_exported.folder
    assert check_hub_folder(folder) == []
    assert hub_files(folder) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "generation_config.json", "run_info.json",
        "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "training_args.json",
    ]
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == BASE_REPO
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert sum("trainable_tokens_delta" in n for n in names) == 2  # the [MASK]/<slack> rows of embedding and head
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == BASE_REPO
    assert data["pipeline_tag"] == "text-generation"
    assert {"masked-diffusion", "custom_code", "hf_mdlm", "slack-ctc", "lora"} <= set(data["tags"])
    assert "PeftModel.from_pretrained(base, repo)" in first_python_block(folder / "README.md")
    assert "2.3456" in card.text

    base = MDLMForMaskedLM.from_pretrained(str(adapter_exported.base_folder))
    reloaded = PeftModel.from_pretrained(base, str(folder)).eval()
    ids = torch.randint(0, len(tokenizer), (2, 10), generator=torch.Generator().manual_seed(1))
    ids[:, 2:5] = tokenizer.mask_token_id
    with torch.no_grad():
        expected = adapter_exported.model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        untouched = MDLMForMaskedLM.from_pretrained(str(adapter_exported.base_folder))(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(untouched, expected)  # the training changed the model


def test_adapter_with_a_local_base_is_refused(adapter_exported, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="is a local path"):
        export_for_hub(adapter_exported.raw_dir / "adapter", tokenizer, tmp_path / "out", repo_id=ADAPTER_REPO)


def test_card_templates_and_bundled_data_ship_inside_the_package():
    """The wheel and sdist carry the card templates and the bundled corpus (package data, no symlink), so
    publishing and the default data work from a plain install too."""
    import hf_mdlm

    package = Path(hf_mdlm.__file__).resolve().parent
    for name in ("model_card.md", "adapter_card.md"):
        template = package / "hub" / "templates" / name
        assert template.is_file() and not template.is_symlink() and "{{" in template.read_text()
    assert not any(p.is_symlink() for p in package.rglob("*"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    data = re.search(r'\[tool\.setuptools\.package-data\][^\[]*hf_mdlm = \[([^\]]*)\]', pyproject).group(1)
    for pattern in ("hub/templates/*.md", "data/bundled/*.gz", "data/bundled/tokenizer/*.json"):
        assert f'"{pattern}"' in data
        assert list(package.glob(pattern)), pattern


def test_a_missing_card_template_is_named(monkeypatch):
    from hf_mdlm.hub import cards

    monkeypatch.setitem(cards._TEMPLATE_NAMES, "model", "no_such_card.md")
    with pytest.raises(FileNotFoundError, match=r"no_such_card\.md is missing: reinstall hf_mdlm"):
        cards._template_path("model")


# ----------------------------------------------------------------------------- the saved folder stands alone


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config()).eval()
    out = tmp_path / "model"
    model.save_pretrained(out)
    return model, out


def test_saved_folder_contents(saved_model):
    _, folder = saved_model
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_mdlm.py", "modeling_mdlm.py",
            "generation_mdlm.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mdlm.MDLMConfig",
        "AutoModel": "modeling_mdlm.MDLMForMaskedLM",
        "AutoModelForMaskedLM": "modeling_mdlm.MDLMForMaskedLM",
    }


def test_loads_with_trust_remote_code_without_hf_mdlm(saved_model, tmp_path):
    """In a process that cannot import hf_mdlm: load by path and by repo id from an offline HF cache."""
    model, folder = saved_model
    ids = torch.randint(0, 90, (2, 7))
    with torch.no_grad():
        expected = model(ids).logits
    save_file({"ids": ids}, str(tmp_path / "ids.safetensors"))
    hf_home = tmp_path / "hf_home"
    install_in_hf_cache(folder, "org/name", hf_home)
    code = f"""
        import json, torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoModelForMaskedLM
        try:
            import hf_mdlm
            raise SystemExit("hf_mdlm should not be importable here")
        except ImportError:
            pass
        ids = load_file({str(tmp_path / 'ids.safetensors')!r})["ids"]
        by_path = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        by_repo = AutoModelForMaskedLM.from_pretrained("org/name", trust_remote_code=True).eval()
        with torch.no_grad():
            save_file({{"path": by_path(ids).logits, "repo": by_repo(ids).logits}}, "logits.safetensors")
        print(json.dumps({{"cls": type(by_repo).__name__, "module": type(by_path).__module__,
                           "has_generate": hasattr(by_path, "generate")}}))
    """
    info = last_json_line(run_without_hf_mdlm(code, cwd=tmp_path, env={"HF_HOME": str(hf_home)}))
    assert info["cls"] == "MDLMForMaskedLM" and info["has_generate"]
    assert not info["module"].startswith("hf_mdlm")
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "logits.safetensors"))
    torch.testing.assert_close(got["path"], expected, rtol=0, atol=0)
    torch.testing.assert_close(got["repo"], expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- output folders


def test_a_non_empty_output_folder_is_refused_unless_resuming_or_overwriting(tmp_path, caplog):
    from hf_mdlm.hub import OutputFolder, OutputFolderError

    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    for name in ("config.json", "model.safetensors", "run_info.json", "training_args.json"):
        (out / name).write_text("stale")
    (out / "checkpoint-5").mkdir()
    with pytest.raises(OutputFolderError, match="is not empty .*--overwrite_output_dir"):
        OutputFolder(out)
    OutputFolder(out, resume=str(out / "checkpoint-5")).close()  # resuming: its files are the run
    with OutputFolder(out, overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == [".hf_mdlm.lock"]  # the stale adapter/ is gone
    # a folder with files no run writes: nothing is deleted, even with overwrite
    (out / "config.json").write_text("stale")
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputFolderError, match="thesis.tex.*nothing was deleted"):
        OutputFolder(out, overwrite=True)
    assert (out / "thesis.tex").exists() and (out / "config.json").exists()


def test_a_writability_probe_left_by_a_killed_run_does_not_block_the_next(tmp_path, caplog):
    """A process killed between writing and removing its probe file leaves it behind (CI found this through the
    kill-at-any-moment conversion test): the next run removes it, without a warning, and finds the folder empty."""
    from hf_mdlm.hub import OutputFolder
    from hf_mdlm.hub.outputs import PROBE_PREFIX

    out = tmp_path / "run"
    out.mkdir()
    (out / f"{PROBE_PREFIX}0123abcd").write_bytes(b"")
    with caplog.at_level("WARNING"), OutputFolder(out):
        assert sorted(p.name for p in out.iterdir()) == [".hf_mdlm.lock"]
    assert not caplog.records


def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path):
    from hf_mdlm.hub import OutputFolder, OutputFolderError

    out = tmp_path / "run"
    with OutputFolder(out):
        with pytest.raises(OutputFolderError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            OutputFolder(out)
        with pytest.raises(OutputFolderError, match="in use by another run"):
            example("finetune").main(TINY + ["--output_dir", str(out), "--max_steps", "1"])
    assert not (out / ".hf_mdlm.lock").exists()  # a finished folder holds only what the run wrote
    OutputFolder(out).close()  # released: the next run may go


def test_a_folder_the_command_made_and_left_empty_is_removed(tmp_path):
    """A run refused after its output folder was checked (e.g. --push_to_hub offline) left an empty folder behind."""
    from hf_mdlm.hub import OutputFolder

    OutputFolder(tmp_path / "new" / "run").close()
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    OutputFolder(tmp_path / "mine").close()
    assert (tmp_path / "mine").is_dir()
    with OutputFolder(tmp_path / "written") as folder:  # one the command wrote into stays
        (folder.path / "config.json").write_text("{}")
    assert (tmp_path / "written" / "config.json").exists()


def test_a_lock_taken_on_the_file_a_finishing_run_removed_is_taken_again(tmp_path, monkeypatch):
    """A run that opens the lock file just before its holder ends, removes the file and lets go, would lock a file
    no longer there while a third run locks the new one: the lock is taken again on the file at the path."""
    import fcntl

    from hf_mdlm.hub import OutputFolder, OutputFolderError

    out = tmp_path / "run"
    out.mkdir()  # (a folder the holder made would go with it when it ends empty)
    holder = OutputFolder(out)
    real_flock, calls = fcntl.flock, []

    def flock_after_the_holder_ends(fd, operation):
        calls.append(operation)
        if len(calls) == 1:
            holder.close()  # the holder ends between our open and our lock: it removes the file we opened
            (out / ".hf_mdlm.lock").write_text("pid of a third run\n")
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_ends)
    folder = OutputFolder(out)
    assert len(calls) == 2  # locked the removed file, then the one at the path
    monkeypatch.setattr(fcntl, "flock", real_flock)
    with pytest.raises(OutputFolderError, match="in use by another run"):
        OutputFolder(out)
    folder.close()
    assert not (out / ".hf_mdlm.lock").exists()


def test_the_final_save_is_staged_and_a_killed_save_leaves_no_loadable_folder(tokenizer, tmp_path, caplog):
    from types import SimpleNamespace

    from transformers import TrainerState

    from hf_mdlm import DataArguments
    from hf_mdlm.hub import OutputFolder, OutputFolderError, save_model_folder

    out = tmp_path / "run"
    trainer = SimpleNamespace(model=tiny_model_for(tokenizer), state=TrainerState(), args={"seed": 0})

    class Killed(Exception):
        pass

    class DyingTokenizer:  # the process dies while the tokenizer is written, after the weights
        def save_pretrained(self, path):
            raise Killed

    with pytest.raises(Killed):
        save_model_folder(trainer, DyingTokenizer(), out, DataArguments(canvas_length=16))
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert (out / ".hf_mdlm-saving" / "model.safetensors").exists()  # the partial save, hidden
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.hub.outputs"):
        with OutputFolder(out):
            assert not (out / ".hf_mdlm-saving").exists()
    assert "the unfinished save of a process that was killed" in caplog.text
    (out / ".tmpq1w2e3").write_bytes(b"x" * 1000)  # a hidden temporary file of another tool: reported
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.hub.outputs"):
        with pytest.raises(OutputFolderError, match=r"holds files that this command does not write \(\.tmpq1w2e3\)"):
            OutputFolder(out, overwrite=True)
    assert "hidden files no hf_mdlm run writes" in caplog.text and ".tmpq1w2e3" in caplog.text
    (out / ".tmpq1w2e3").unlink()
    save_model_folder(trainer, tokenizer, out, DataArguments(canvas_length=16))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"} <= names
    assert not (out / ".hf_mdlm-saving").exists()


def test_resume_true_means_the_last_checkpoint(tmp_path, caplog):
    from hf_mdlm.hub import OutputFolderError, resolve_resume

    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "rng_state.pth").write_bytes(b"")
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (tmp_path / "checkpoint-12").mkdir()  # a save killed before its trainer_state.json: passed over, said so
    (tmp_path / "checkpoint-12" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoint-11").mkdir()  # killed while writing trainer_state.json: passed over too
    (tmp_path / "checkpoint-11" / "trainer_state.json").write_text('{"global_step": 1')
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.hub.outputs"):
        assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-12: its save did not finish" in caplog.text and "checkpoint-11: its save" in caplog.text
    with pytest.raises(OutputFolderError, match="checkpoint-12: not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-12"), tmp_path)
    assert resolve_resume(True, tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("false", tmp_path) is None and resolve_resume(None, tmp_path) is None
    assert resolve_resume(str(tmp_path / "checkpoint-2"), tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(OutputFolderError, match="no such checkpoint folder"):
        resolve_resume(str(tmp_path / "checkpoint-3"), tmp_path)
    # a finished run's output folder has a trainer_state.json but nothing else to resume: it is not a checkpoint
    (tmp_path / "trainer_state.json").write_text('{"global_step": 10}')
    with pytest.raises(OutputFolderError, match="a finished run's output folder, not a training checkpoint"):
        resolve_resume(str(tmp_path), tmp_path / "next-run")


def test_resuming_from_another_folders_checkpoint_keeps_the_output_checks(tmp_path):
    """`--resume_from_checkpoint PATH` used to switch the output-folder check off for any existing PATH, so a run
    wrote into an unrelated non-empty folder; only this folder's own checkpoints resume into it."""
    from hf_mdlm.hub import OutputFolder, OutputFolderError

    elsewhere = tmp_path / "other-run" / "checkpoint-4"
    elsewhere.mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="is not empty"):
        OutputFolder(out, resume=str(elsewhere))
    (out / "checkpoint-2").mkdir()
    OutputFolder(out, resume=str(out / "checkpoint-2")).close()  # its own run: resumed
    assert (out / "notes.txt").read_text() == "mine"


def test_check_hub_folder_finds_a_truncated_safetensors(model_folder, tmp_path):
    from hf_mdlm.hub import check_hub_folder

    folder = tmp_path / "m"
    shutil.copytree(model_folder, folder)
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# card\n")
    assert check_hub_folder(folder) == []
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    assert any("model.safetensors is truncated" in p for p in check_hub_folder(folder))
    weights.write_bytes(data[:20])
    assert any("model.safetensors is truncated: its header" in p for p in check_hub_folder(folder))


def test_an_adapter_on_a_base_in_another_format_is_refused(adapter_exported, tokenizer, tmp_path, monkeypatch):
    """The adapter targets the hf_mdlm conversion's modules: naming the original LLaDA repository as its base would
    publish something that does not load, so the export refuses it and says how to publish the converted base."""
    import huggingface_hub

    from conftest import LLADA_TINY

    install_in_hf_cache(LLADA_TINY, "GSAI-ML/LLaDA-tiny", tmp_path / "hf_home")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    adapter_dir = adapter_exported.raw_dir / "adapter"
    with pytest.raises(ValueError, match=r"GSAI-ML/LLaDA-tiny is not an hf_mdlm model(.|\n)*--push_base"):
        export_for_hub(adapter_dir, tokenizer, tmp_path / "out", repo_id=ADAPTER_REPO, base_model="GSAI-ML/LLaDA-tiny")
    other = tmp_path / "other"  # an hf_mdlm model of another shape: the adapter's matrices would not fit it
    MDLMForMaskedLM(tiny_config(hidden_size=48, vocab_size=len(tokenizer))).save_pretrained(other)
    install_in_hf_cache(other, "me/other-hf-mdlm", tmp_path / "hf_home")
    with pytest.raises(ValueError, match="is not the model it was trained on .*hidden_size 48 \\(base\\)"):
        export_for_hub(adapter_dir, tokenizer, tmp_path / "out2", repo_id=ADAPTER_REPO, base_model="me/other-hf-mdlm")
    install_in_hf_cache(adapter_exported.base_folder, "me/base-hf-mdlm", tmp_path / "hf_home")  # an hf_mdlm base
    folder = export_for_hub(adapter_dir, tokenizer, tmp_path / "ok", repo_id=ADAPTER_REPO, base_model="me/base-hf-mdlm")
    assert check_hub_folder(folder) == []


def test_export_hard_links_the_weights(model_folder, tmp_path):
    folder = export_for_hub(model_folder, None, tmp_path / "out", repo_id=REPO)
    assert (folder / "model.safetensors").samefile(model_folder / "model.safetensors")  # no second 16 GB copy
    assert not (folder / "config.json").samefile(model_folder / "config.json")  # rewritten files are copies


# ----------------------------------------------------------------------------- killed while writing


def _complete_or_not_loadable(folder):
    """What a killed write may leave: a complete folder, or one without config.json, which loads nowhere."""
    from hf_mdlm.hub.checks import check_folder_files

    if (folder / "config.json").exists():
        check_folder_files(folder)
        assert MDLMForMaskedLM.from_pretrained(folder) is not None
        return "complete"
    return "not loadable"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_final_save_killed_at_any_moment_leaves_no_folder_that_loads(tokenizer, tmp_path, caplog):
    """The final save of finetune.py, SIGKILLed at 12 random moments: each folder is complete or does not load, and
    the next run into it reports and removes the unfinished save."""
    from types import SimpleNamespace

    from transformers import TrainerState

    from hf_mdlm.data import DataArguments
    from hf_mdlm.hub import OutputFolder, save_model_folder
    from kill_points import killed_runs

    trainer = SimpleNamespace(model=tiny_model_for(tokenizer), state=TrainerState(), args={"seed": 0})

    def save(folder):
        save_model_folder(trainer, tokenizer, folder, DataArguments(canvas_length=16))

    seen = set()
    for folder in killed_runs(save, [tmp_path / f"run{i}" for i in range(13)], seed=1):
        seen.add(_complete_or_not_loadable(folder))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_mdlm.hub.outputs"):
            OutputFolder(folder, overwrite=True).close()  # the next run: overwrite what the killed one wrote
        assert not (folder / ".hf_mdlm-saving").exists()
        assert "unfinished" in caplog.text or not any(folder.glob(".hf_mdlm-saving*"))
    assert seen  # at least one kill landed (most land mid-save)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_an_export_killed_at_any_moment_leaves_nothing_that_loads_or_uploads(model_folder, tmp_path):
    """export_for_hub SIGKILLed at 12 random moments: each folder is a complete, checked Hub folder or has no
    config.json (hidden staging files are never uploaded), and exporting again says what it found."""
    from kill_points import killed_runs

    def export(folder):
        export_for_hub(model_folder, None, folder, repo_id=REPO)

    for folder in killed_runs(export, [tmp_path / f"up{i}" for i in range(13)], seed=2):
        if _complete_or_not_loadable(folder) == "complete":
            assert check_hub_folder(folder) == []
        visible = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []
        if visible and not (folder / "config.json").exists():
            with pytest.raises(FileExistsError, match="is not empty"):
                export_for_hub(model_folder, None, folder, repo_id=REPO)
        elif not visible:  # only the hidden leftover (or nothing): the next export goes through
            assert check_hub_folder(export_for_hub(model_folder, None, folder, repo_id=REPO)) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_full_disk_during_a_save_names_the_file_and_keeps_the_earlier_folder(tokenizer, tmp_path):
    """A save that runs out of space (simulated with RLIMIT_FSIZE in a forked child) ends with an error naming the
    file and 'no space', and the folder's earlier, complete save is intact."""
    import resource
    import signal
    from types import SimpleNamespace

    from transformers import TrainerState

    from hf_mdlm.data import DataArguments
    from hf_mdlm.hub import save_model_folder

    trainer = SimpleNamespace(model=tiny_model_for(tokenizer), state=TrainerState(), args={"seed": 0})
    out = tmp_path / "run"
    save_model_folder(trainer, tokenizer, out, DataArguments(canvas_length=16))  # the earlier, complete save
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    report = tmp_path / "error.txt"
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
            save_model_folder(trainer, tokenizer, out, DataArguments(canvas_length=16))
            report.write_text("saved")
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            report.write_text(f"{type(error).__name__}: {error}")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    message = report.read_text()
    assert message.startswith("OutputFolderError: no space left to save the model: writing ")
    assert str(out / ".hf_mdlm-saving") in message and "File too large" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / ".hf_mdlm-saving").exists()


def test_a_checkpoint_resumes_only_into_a_run_of_its_kind(tmp_path):
    """A LoRA checkpoint resumed as a full fine-tune (or the reverse, or at another rank) failed deep inside
    transformers or torch: "missing keys", "a parameter group that doesn't match the size"."""
    from hf_mdlm.hub import OutputFolderError
    from hf_mdlm.hub.outputs import check_checkpoint_kind

    full, adapter = tmp_path / "full", tmp_path / "adapter"
    full.mkdir()
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    check_checkpoint_kind(full, 0)
    check_checkpoint_kind(adapter, 8)
    with pytest.raises(OutputFolderError, match="holds a full fine-tune: resume it with no --lora_r"):
        check_checkpoint_kind(full, 4)
    with pytest.raises(OutputFolderError, match="holds a LoRA adapter of rank 8: resume it with --lora_r 8"):
        check_checkpoint_kind(adapter, 0)
    with pytest.raises(OutputFolderError, match="holds a LoRA adapter of rank 8: resume it with --lora_r 8"):
        check_checkpoint_kind(adapter, 4)


def test_links_out_of_the_folder_are_neither_exported_nor_uploaded(model_folder, tmp_path):
    """git keeps symlinks, so a cloned folder can hold a link to ~/.ssh/id_rsa named merges.txt: the export copied
    its target into the upload, and check_hub_folder saw nothing."""
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    folder = tmp_path / "linked"
    shutil.copytree(model_folder, folder)
    (folder / "merges.txt").symlink_to(secret)
    with pytest.raises(ValueError, match=f"merges.txt is a link to {secret}, outside"):
        export_for_hub(folder, None, tmp_path / "out", repo_id=REPO)
    exported = export_for_hub(model_folder, None, tmp_path / "ok", repo_id=REPO)
    (exported / "notes.txt").symlink_to(secret)
    assert any(f"notes.txt is a link to {secret}, outside the folder" in p for p in check_hub_folder(exported))


def test_the_export_ships_the_installed_code_and_refuses_code_of_another_repository(model_folder, tmp_path):
    """A model folder with its own code files and an auto_map naming code in another repository was republished as
    it was: everyone loading the user's repository with trust_remote_code=True would run that code."""
    from hf_mdlm.configuration_mdlm import DEFAULT_AUTO_MAP
    from hf_mdlm.hub.files import INSTALLED_CODE

    folder = tmp_path / "foreign-code"
    shutil.copytree(model_folder, folder)
    (folder / "modeling_mdlm.py").write_text("import os  # someone else's code\n")
    (folder / "extra_code.py").write_text("import os\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {**config["auto_map"], "AutoModelForMaskedLM": "attacker/repo--modeling_mdlm.MDLMForMaskedLM",
                          "AutoModelForCausalLM": "extra_code.Extra"}
    (folder / "config.json").write_text(json.dumps(config))
    problems = check_hub_folder(folder)
    assert any("modeling_mdlm.py is not the installed hf_mdlm's" in p for p in problems)
    assert any("'attacker/repo--modeling_mdlm.MDLMForMaskedLM': code in another repository" in p for p in problems)
    exported = export_for_hub(folder, None, tmp_path / "out", repo_id=REPO)
    assert json.loads((exported / "config.json").read_text())["auto_map"] == DEFAULT_AUTO_MAP
    assert (exported / "modeling_mdlm.py").read_bytes() == (INSTALLED_CODE / "modeling_mdlm.py").read_bytes()
    assert not (exported / "extra_code.py").exists() and check_hub_folder(exported) == []


def test_a_fine_tuned_model_is_saved_with_the_installed_code_whatever_its_start_carried(tokenizer, tmp_path):
    """A start model whose config named code in another repository for AutoModelForMaskedLM: transformers' save
    rewrote AutoConfig and AutoModel only, so the user's fine-tuned folder kept the other repository's entry."""
    from types import SimpleNamespace

    from transformers import TrainerState

    from hf_mdlm import DataArguments
    from hf_mdlm.configuration_mdlm import DEFAULT_AUTO_MAP
    from hf_mdlm.hub import save_model_folder

    model = tiny_model_for(tokenizer)
    model.config.auto_map = {**DEFAULT_AUTO_MAP, "AutoModelForMaskedLM": "attacker/repo--modeling_mdlm.X"}
    trainer = SimpleNamespace(model=model, state=TrainerState(), args={"seed": 0})
    save_model_folder(trainer, tokenizer, tmp_path / "run", DataArguments(canvas_length=16))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["auto_map"] == DEFAULT_AUTO_MAP
