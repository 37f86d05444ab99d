"""Publishing on the Hub: export_for_hub, check_hub_folder, push_to_hub, the model cards and
examples/push_to_hub.py. No network: HfApi's methods are replaced by recorders, and the one subprocess reads an
offline HF cache."""

import importlib.util
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from conftest import tiny_config
from hub_cache import COMMIT, install_in_hf_cache, last_json_line, run_without_hf_mdlm

from hf_mdlm import MDLMForMaskedLM
from hf_mdlm.hub import check_hub_folder, export_for_hub, hub_files, push_to_hub, save_run_record

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "hf_mdlm" / "data" / "bundled" / "tokenizer"
TOKEN = "hf_" + "NotARealTokenButLooksLikeOne" * 2
REPO, BASE_REPO, ADAPTER_REPO = "org/tiny-mdlm", "org/tiny-base", "org/tiny-mdlm-lora"
FULL_FILES = [
    "README.md", "config.json", "configuration_mdlm.py", "generation_config.json", "generation_mdlm.py",
    "model.safetensors", "modeling_mdlm.py", "results.json", "run_info.json", "tokenizer.json",
    "tokenizer_config.json", "trainer_state.json", "training_args.json",
]
TRAINER_STATE = {
    "global_step": 30, "max_steps": 30, "epoch": 1.5,
    "log_history": [
        {"step": 10, "epoch": 0.5, "loss": 3.1, "loss_ce": 2.0, "loss_ctc": 1.1, "learning_rate": 1e-3},
        {"step": 30, "epoch": 1.5, "loss": 2.3456, "loss_ce": 1.5012, "loss_ctc": 0.8444,
         "loss_ce_weighted": 1.2345, "loss_ctc_weighted": 0.7111, "slack_per_example": 3.25, "learning_rate": 1e-4},
        {"step": 30, "epoch": 1.5, "eval_loss": 2.6789, "eval_loss_ce": 1.7001, "eval_loss_ctc": 0.9788},
        {"step": 30, "epoch": 1.5, "train_runtime": 754.2, "train_loss": 2.7123},
    ],
}
EVAL_RESULTS = {"held_out": {"loss": 2.5, "accuracy": 0.375}}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def trained_looking_model(tokenizer, seed=0):
    """A tiny MDLM sized to the bundled tokenizer, whose head never proposes a special token (so it prints text)."""
    config = tiny_config(
        vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
        slack_token_id=tokenizer.convert_tokens_to_ids("<slack>"), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = MDLMForMaskedLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[:5].zero_()  # <pad> <bos> <eos> [MASK] <slack>
    model.generation_config.max_new_tokens = 16
    model.generation_config.steps = 16
    model.generation_config.suppress_slack = True  # as saved after training with <slack>
    return model


@pytest.fixture(scope="module")
def training_args(tmp_path_factory):
    from hf_mdlm.training.arguments import MDLMTrainingArguments

    return MDLMTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("run")), ce_weight=1.0, ctc_weight=0.5, slack_prob=0.2,
        noise_schedule="cosine", loss_normalization="masked", learning_rate=2e-3, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, max_steps=30, seed=3, report_to="none", hub_token=TOKEN,
    )


@pytest.fixture(scope="module")
def exported(tokenizer, training_args, tmp_path_factory):
    model = trained_looking_model(tokenizer)
    folder = export_for_hub(
        model, tokenizer, tmp_path_factory.mktemp("export") / "full", repo_id=REPO, training_args=training_args,
        trainer_state=TRAINER_STATE, datasets=["org/tiny-data"], eval_results=EVAL_RESULTS,
    )
    return SimpleNamespace(model=model, folder=folder)


def tiny_lora(model, tokenizer):
    from peft import LoraConfig, get_peft_model

    rows = [tokenizer.mask_token_id, tokenizer.convert_tokens_to_ids("<slack>")]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        trainable_token_indices={"model.embed_tokens": rows, "lm_head": rows})
    return get_peft_model(model, config)


@pytest.fixture(scope="module")
def adapter_exported(tokenizer, training_args, tmp_path_factory):
    """A base model exported as its own repo, a LoRA (with the [MASK]/<slack> rows) trained a few steps on it,
    and the adapter exported for BASE_REPO."""
    root = tmp_path_factory.mktemp("adapter")
    base_folder = export_for_hub(trained_looking_model(tokenizer, seed=1), tokenizer, root / "base", repo_id=BASE_REPO)
    peft_model = tiny_lora(MDLMForMaskedLM.from_pretrained(str(base_folder)), tokenizer)
    raw_dir = root / "raw-run"  # what examples/finetune.py leaves: the PEFT save in run/adapter
    peft_model.train()
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        ids = torch.randint(5, len(tokenizer), (2, 12), generator=generator)
        ids[:, 3:6] = tokenizer.mask_token_id
        ids[:, 8] = tokenizer.convert_tokens_to_ids("<slack>")
        targets = torch.randint(5, len(tokenizer), (2, 12), generator=generator)  # never a special token
        logits = peft_model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    peft_model.save_pretrained(str(raw_dir / "adapter"))
    folder = export_for_hub(peft_model, tokenizer, root / "lora", repo_id=ADAPTER_REPO, base_model=BASE_REPO,
                            training_args=training_args, trainer_state=TRAINER_STATE)
    return SimpleNamespace(model=peft_model, folder=folder, base_folder=base_folder, raw_dir=raw_dir)


def files_containing(folder, text):
    return [p.name for p in Path(folder).rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def first_python_block(readme):
    match = re.search(r"```python\n(.*?)```", Path(readme).read_text(), re.S)
    assert match, "the card has no ```python block"
    return match.group(1)


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
    bare = export_for_hub(exported.model, tokenizer, tmp_path / "bare", repo_id=REPO)
    card = ModelCard.load(bare / "README.md")
    assert "slack-ctc" not in card.data.tags
    assert "| slack-CTC weight (`ctc_weight`) | not recorded |" in card.text
    assert "**Final logged losses**\n\nnot recorded" in card.text
    assert "| Hardware | not recorded |" in card.text
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


@pytest.fixture
def hub_calls(monkeypatch):
    """Replace every HfApi method push_to_hub could use by a recorder."""
    calls = []

    def recorder(name):
        def record(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return SimpleNamespace(commit_url=f"https://huggingface.co/{REPO}/commit/0", repo_id=REPO)
        return record

    for name in ("create_repo", "create_commit", "upload_folder", "create_branch", "upload_file"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    return calls


def test_push_creates_the_repo_and_uploads_every_file_in_one_commit(exported, hub_calls, capsys):
    info = push_to_hub(exported.folder, REPO, private=True, token=TOKEN)
    assert info.repo_id == REPO
    assert [name for name, _, _ in hub_calls] == ["create_repo", "create_commit"]
    _, args, kwargs = hub_calls[0]
    assert args == (REPO,) and kwargs["private"] is True and kwargs["exist_ok"] is True
    _, args, kwargs = hub_calls[1]
    assert args == (REPO,)
    assert sorted(op.path_in_repo for op in kwargs["operations"]) == FULL_FILES
    assert kwargs["revision"] is None and kwargs["commit_message"]
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert files_containing(exported.folder, TOKEN) == []


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


def load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub_script", ROOT / "examples" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_dry_run_lists_the_files_and_uploads_nothing(exported, adapter_exported, tokenizer, training_args,
                                                            hub_calls, tmp_path, capsys):
    script = load_script()
    run = tmp_path / "run"  # a finetune-style output: merged model + tokenizer + records + adapter/
    shutil.copytree(adapter_exported.raw_dir / "adapter", run / "adapter")
    exported.model.save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    (run / "trainer_state.json").write_text(json.dumps(TRAINER_STATE))
    save_run_record(training_args, run)

    out = script.main(["--model_dir", str(run), "--repo_id", REPO, "--dry_run", "--out_dir", str(tmp_path / "up")])
    printed = capsys.readouterr().out
    names = [n for n in FULL_FILES if n != "results.json"]
    assert hub_files(out) == names
    for name in names:
        assert f"  {name}  (" in printed
    assert "nothing was uploaded" in printed
    readme = (out / "README.md").read_text()
    assert f'repo = "{REPO}"' in readme and "2.3456" in readme
    assert "fine-tuned with LoRA (rank 4) and the adapter was merged" in readme

    out = script.main(["--model_dir", str(run), "--repo_id", ADAPTER_REPO, "--adapter", "--base_model", BASE_REPO,
                       "--dry_run", "--out_dir", str(tmp_path / "up-lora")])
    printed = capsys.readouterr().out
    assert "adapter_model.safetensors" in printed and check_hub_folder(out) == []
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_REPO
    assert hub_calls == []


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
