"""Issue 15, reliability and security: the Hub token is never written or uploaded by Trainer, folder code runs only
on request, no command deletes or mixes a run, failures come before the work, results do not depend on batching,
and bad input gets a clear error. No network: HfApi's methods are replaced by recorders."""

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import LLADA_TINY, tiny_config

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "hf_mdlm" / "data" / "bundled" / "tokenizer"
TOKEN = "hf_" + "FakeTokenForTheReliabilityTests" * 2
TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "2",
        "--logging_steps", "1", "--max_train_samples", "32", "--eval_strategy", "no", "--learning_rate", "0.01",
        "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--num_samples", "0",
        "--per_device_train_batch_size", "4", "--canvas_length", "16", "--text_response_length", "12"]


def example(name):
    """An example script as a module (each test file loads them the same way; examples never import each other)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def tiny_model_for(tokenizer, seed=0, **overrides):
    from hf_mdlm import MDLMForMaskedLM

    config = tiny_config(
        vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
        slack_token_id=tokenizer.convert_tokens_to_ids("<slack>"), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, **overrides,
    )
    torch.manual_seed(seed)
    model = MDLMForMaskedLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[:5].zero_()  # no special token is ever the likeliest: the samples are text
    model.generation_config.max_new_tokens = 8
    model.generation_config.steps = 8
    return model


@pytest.fixture(scope="module")
def model_folder(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model_for(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def all_files(*roots):
    return [p for root in roots if Path(root).exists() for p in Path(root).rglob("*") if p.is_file()]


class HubRecorder:
    """Replaces every HfApi method that talks to the Hub; records the calls."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.calls = []
        for name in ("create_repo", "create_branch", "create_commit", "upload_folder", "upload_file",
                     "create_pull_request", "whoami"):
            monkeypatch.setattr(HfApi, name, self._recorder(name), raising=False)

    def _recorder(self, name):
        def record(api, *args, **kwargs):
            self.calls.append((name, api.token, args, kwargs))
            if name == "create_commit":
                from types import SimpleNamespace

                return SimpleNamespace(commit_url="https://huggingface.co/recorded")
            return None
        return record

    def names(self):
        return [call[0] for call in self.calls]


# ---- 1. the token ------------------------------------------------------------------------------------------------


def test_push_to_hub_token_is_never_written_and_only_our_checked_export_is_uploaded(tmp_path, monkeypatch):
    """finetune.py --push_to_hub --hub_token T with checkpoints on: no byte of any file written anywhere holds T,
    Trainer never pushes, and the one upload is our export folder, sent with T."""
    from transformers import Trainer

    hub = HubRecorder(monkeypatch)
    trainer_pushes = []
    monkeypatch.setattr(Trainer, "push_to_hub", lambda self, *a, **k: trainer_pushes.append("push_to_hub"))
    monkeypatch.setattr(Trainer, "init_hf_repo", lambda self, *a, **k: trainer_pushes.append("init_hf_repo"))
    monkeypatch.chdir(tmp_path)
    script = example("finetune")
    seen_max_length = []
    real_prepare = script.prepare_datasets

    def prepare(*args, **kwargs):
        seen_max_length.append(kwargs.get("max_length"))
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(script, "prepare_datasets", prepare)
    out = tmp_path / "run"
    trainer = script.main(TINY + ["--output_dir", str(out), "--max_steps", "2", "--save_strategy", "steps",
                                  "--save_steps", "1", "--push_to_hub", "true", "--hub_token", TOKEN,
                                  "--hub_model_id", "org/tiny-run"])
    assert trainer_pushes == []
    assert trainer.args.hub_token is None and trainer.args.push_to_hub is False
    written = all_files(tmp_path)
    assert any(p.name == "training_args.bin" and p.parent.name.startswith("checkpoint-") for p in written)
    leaked = [str(p) for p in written if TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert hub.names() == ["create_repo", "create_commit"]
    assert all(call[1] == TOKEN for call in hub.calls)  # sent with the token, kept in memory only
    _, _, args, kwargs = hub.calls[1]
    uploaded = sorted(op.path_in_repo for op in kwargs["operations"])
    export = tmp_path / "run-hub"
    assert uploaded == sorted(p.relative_to(export).as_posix() for p in all_files(export))
    assert "training_args.bin" not in uploaded and "README.md" in uploaded
    assert seen_max_length == [1024]  # the model's position limit reaches the preprocessing (item 8)

    # --resume_from_checkpoint true resumes from the last checkpoint of the output folder (item 8)
    resumed = script.main(TINY + ["--output_dir", str(out), "--max_steps", "3", "--save_strategy", "no",
                                  "--resume_from_checkpoint", "true"])
    assert resumed.args.resume_from_checkpoint == str(out / "checkpoint-2")
    assert resumed.state.global_step == 3
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps[:2] == [1, 2] and steps[-1] == 3  # the first two logs come from the checkpoint's state
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert not (out / ".hf_mdlm-saving").exists()


def test_mdlm_trainer_refuses_a_token_or_a_push(tokenizer, tmp_path):
    from hf_mdlm import DiffusionCollator, MDLMTrainer, MDLMTrainingArguments
    from hf_mdlm.hub import detach_hub_settings

    model = tiny_model_for(tokenizer)
    collator = DiffusionCollator(pad_token_id=tokenizer.pad_token_id, canvas_length=8)
    for flags in ({"hub_token": TOKEN}, {"push_to_hub": True}):
        args = MDLMTrainingArguments(output_dir=str(tmp_path), report_to="none", **flags)
        with pytest.raises(ValueError, match="must not hold a token"):
            MDLMTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)
    args = MDLMTrainingArguments(output_dir=str(tmp_path), report_to="none", push_to_hub=True, hub_token=TOKEN,
                                 hub_model_id="org/x", hub_private_repo=True)
    request = detach_hub_settings(args)
    assert (request.repo_id, request.private, request.token) == ("org/x", True, TOKEN)
    assert args.hub_token is None and args.push_to_hub is False
    MDLMTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)


# ---- 2. remote code ----------------------------------------------------------------------------------------------


def add_canary(folder, marker):
    """Make every Python file of `folder` write `marker` when it is executed."""
    for path in Path(folder).glob("*.py"):
        path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n" + path.read_text())


@pytest.fixture
def canary_mdlm(model_folder, tmp_path):
    folder = tmp_path / "canary-mdlm"
    shutil.copytree(model_folder, folder)
    marker = tmp_path / "folder-code-ran"
    add_canary(folder, marker)
    return folder, marker


@pytest.fixture
def canary_foreign(tmp_path):
    """A folder of another model type whose configuration code writes the marker."""
    folder = tmp_path / "canary-foreign"
    folder.mkdir()
    marker = tmp_path / "foreign-code-ran"
    (folder / "configuration_canary.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n\n\nclass CanaryConfig(PretrainedConfig):\n"
        "    model_type = 'canary_model'\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "canary_model", "auto_map": {"AutoConfig": "configuration_canary.CanaryConfig",
                                                   "AutoModel": "modeling_canary.CanaryModel",
                                                   "AutoModelForMaskedLM": "modeling_canary.CanaryModel"}}))
    shutil.copytree(TOKENIZER_DIR, folder, dirs_exist_ok=True)
    return folder, marker


def test_an_mdlm_folder_loads_with_the_installed_classes_everywhere(canary_mdlm, tmp_path, monkeypatch, capsys):
    folder, marker = canary_mdlm
    from hf_mdlm.loading import ModelArguments, load_for_inference, load_model_and_tokenizer

    model, _ = load_for_inference(folder)
    assert type(model).__module__ == "hf_mdlm.modeling_mdlm"
    load_model_and_tokenizer(ModelArguments(model_name_or_path=str(folder)), tmp_path / "out")
    example("generate").main(["--model", str(folder), "--prompt", "To be", "--seed", "0", "--max_new_tokens", "4",
                              "--steps", "4"])
    monkeypatch.chdir(tmp_path)
    example("evaluate").main(["--model", str(folder), "--output_dir", str(tmp_path / "eval"), "--elbo_examples", "2",
                              "--elbo_samples", "1", "--canvas_length", "8", "--text_response_length", "6",
                              "--device", "cpu"])
    if importlib.util.find_spec("lm_eval") is not None:
        from hf_mdlm.evaluation.lm_eval import MDLMEvalLM

        MDLMEvalLM(str(folder), device="cpu")
    assert not marker.exists()


def test_other_folders_run_their_code_only_when_trusted(canary_foreign, tmp_path):
    folder, marker = canary_foreign
    from hf_mdlm.loading import ModelArguments, load_for_inference, load_model_and_tokenizer

    assert ModelArguments().trust_remote_code is False
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_for_inference(folder)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=str(folder)), tmp_path)
    with pytest.raises(SystemExit, match="trust_remote_code|canary"):
        try:
            example("generate").main(["--model", str(folder), "--prompt", "x"])
        except ValueError as error:
            raise SystemExit(str(error)) from None
    if importlib.util.find_spec("lm_eval") is not None:
        from hf_mdlm.evaluation.lm_eval import MDLMEvalLM

        with pytest.raises(ValueError, match="trust_remote_code"):
            MDLMEvalLM(str(folder), device="cpu")
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 (the canary has no model class: only its running matters)
        load_for_inference(folder, trust_remote_code=True)
    assert marker.exists()  # the canary works: trusted, the folder's code runs


# ---- 3. push_to_hub.py --overwrite -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_push_to_hub_overwrite_never_deletes_the_model(model_folder, tmp_path, where):
    model = tmp_path / "parent" / "model"
    shutil.copytree(model_folder, model)
    out = {"same": model, "parent": model.parent, "inside": model / "upload"}[where]
    with pytest.raises(SystemExit, match="the model folder"):
        example("push_to_hub").main(["--model_dir", str(model), "--repo_id", "org/x", "--dry_run", "--out_dir",
                                     str(out), "--overwrite"])
    assert (model / "model.safetensors").exists() and (model / "config.json").exists()
    from hf_mdlm.hub import export_for_hub

    with pytest.raises(ValueError, match="the model folder"):
        export_for_hub(model, None, out, repo_id="org/x")


# ---- 4. output folders -------------------------------------------------------------------------------------------


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


def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path):
    from hf_mdlm.hub import OutputFolder, OutputFolderError

    out = tmp_path / "run"
    with OutputFolder(out):
        with pytest.raises(OutputFolderError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            OutputFolder(out)
        with pytest.raises(OutputFolderError, match="in use by another run"):
            example("finetune").main(TINY + ["--output_dir", str(out), "--max_steps", "1"])
    OutputFolder(out).close()  # released: the next run may go


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
    assert "unfinished final save" in caplog.text
    (out / ".tmpq1w2e3").write_bytes(b"x" * 1000)  # a hidden temporary file of another tool: reported
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.hub.outputs"):
        with pytest.raises(OutputFolderError, match=r"holds files that no training run writes \(\.tmpq1w2e3\)"):
            OutputFolder(out, overwrite=True)
    assert "hidden files no hf_mdlm run writes" in caplog.text and ".tmpq1w2e3" in caplog.text
    (out / ".tmpq1w2e3").unlink()
    save_model_folder(trainer, tokenizer, out, DataArguments(canvas_length=16))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"} <= names
    assert not (out / ".hf_mdlm-saving").exists()


# ---- 5. failures before the work ---------------------------------------------------------------------------------


def no_work(monkeypatch, script):
    def fail(*args, **kwargs):
        raise AssertionError("the run started working before checking its outputs")
    monkeypatch.setattr(script, "load_model_and_tokenizer", fail)
    return script


def test_finetune_checks_every_output_before_the_work(tmp_path, monkeypatch):
    from hf_mdlm.hub import OutputFolderError

    script = no_work(monkeypatch, example("finetune"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        script.main(TINY + ["--output_dir", str(a_file)])
    with pytest.raises(OutputFolderError, match="cannot be written"):
        script.main(TINY + ["--output_dir", str(a_file / "run")])
    (tmp_path / "run-hub").mkdir()
    (tmp_path / "run-hub" / "README.md").write_text("an earlier export")
    with pytest.raises(OutputFolderError, match="run-hub already exists"):
        script.main(TINY + ["--output_dir", str(tmp_path / "run"), "--push_to_hub", "true", "--hub_token", TOKEN])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(OutputFolderError, match="needs a Hugging Face token"):
        script.main(TINY + ["--output_dir", str(tmp_path / "run2"), "--push_to_hub", "true"])
    (tmp_path / "run3").mkdir()
    (tmp_path / "run3" / "config.json").write_text("{}")
    with pytest.raises(OutputFolderError, match="not empty"):
        script.main(TINY + ["--output_dir", str(tmp_path / "run3")])
    with pytest.raises(OutputFolderError, match="holds no checkpoint"):
        script.main(TINY + ["--output_dir", str(tmp_path / "run4"), "--resume_from_checkpoint", "true"])


def test_evaluate_and_replicate_check_their_outputs_first(tmp_path, monkeypatch):
    a_file = tmp_path / "results"
    a_file.write_text("x")
    with pytest.raises(SystemExit, match="is a file"):
        example("evaluate").main(["--model", str(tmp_path / "no-such-model"), "--output_dir", str(a_file)])
    with pytest.raises(SystemExit, match="is a file"):
        example("replicate").main(["--smoke", "--output_dir", str(a_file)])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match="matplotlib"):
        example("replicate").main(["--smoke", "--output_dir", str(tmp_path / "rep")])
    with pytest.raises(SystemExit, match="matplotlib"):
        example("evaluate").main(["--model", "no-such-model", "--judge", "j", "--output_dir", str(tmp_path / "e")])


# ---- 6. silent wrong models --------------------------------------------------------------------------------------


def test_missing_weights_are_an_error_unless_asked_for(tokenizer, tmp_path):
    from transformers import BertConfig, BertModel

    from hf_mdlm.loading import ModelArguments, load_model_and_tokenizer

    folder = tmp_path / "bert-without-head"
    config = BertConfig(vocab_size=len(tokenizer) + 2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)  # the encoder only: no masked-LM head
    tokenizer.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"has no weights for cls\.predictions.*--init_missing_weights"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=str(folder)), tmp_path)
    model, _ = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(folder), init_missing_weights=True),
                                        tmp_path)
    assert type(model).__name__ == "BertForMaskedLM"


def test_the_converter_refuses_tensors_its_config_does_not_describe(tmp_path):
    from safetensors.torch import load_file, save_file

    from hf_mdlm import convert_llada_checkpoint

    src = tmp_path / "llada"
    shutil.copytree(LLADA_TINY, src)
    n_layers = json.loads((src / "config.json").read_text())["n_layers"]
    tensors = load_file(str(src / "model.safetensors"))
    extra = f"model.transformer.blocks.{n_layers}.q_proj.weight"
    tensors[extra] = tensors["model.transformer.blocks.0.q_proj.weight"].clone()
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"does not describe.*{extra.replace('.', '[.]')}"):
        convert_llada_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


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


# ---- 7. batching does not change the samples ---------------------------------------------------------------------


def test_generate_gives_the_same_samples_for_any_batch_size(model_folder, capsys):
    prompts = ["To be, or not to be", "Now is the winter", "O Romeo, Romeo", "Friends, Romans"]
    argv = ["--model", str(model_folder), "--seed", "3", "--temperature", "1.0", "--remasking", "random",
            "--no_chat_template", *[x for p in prompts for x in ("--prompt", p)]]
    script = example("generate")
    one = script.main(argv + ["--batch_size", "1"])
    eight = script.main(argv + ["--batch_size", "8"])
    three = script.main(argv + ["--batch_size", "3"])
    assert one == eight == three
    assert len(set(one)) > 1


# ---- 8. clear errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", b"", "empty.jsonl is empty"),
    ("blank.jsonl", b"\n\n  \n", "blank.jsonl is empty"),
    ("empty.txt", b"", "empty.txt is empty"),
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"latin1.jsonl is not UTF-8 text: line 2"),
    ("latin1.csv", b"prompt,completion\na,b\nc,d\ne,\xe9\n", r"latin1.csv is not UTF-8 text: line 4"),
    ("latin1.txt.gz", None, r"latin1.txt.gz is not UTF-8 text: line 3"),
])
def test_bad_data_files_are_named(tmp_path, name, content, message):
    import gzip

    from hf_mdlm import DataArguments, prepare_datasets

    path = tmp_path / name
    if content is None:
        path.write_bytes(gzip.compress(b"one\ntwo\nthr\xe9e\n"))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        prepare_datasets(DataArguments(dataset=str(path), dataset_cache_dir=str(tmp_path / "cache")), None)


def test_rows_beyond_the_position_limit_are_cut_and_counted(tokenizer):
    from hf_mdlm import DataArguments
    from hf_mdlm.data.preprocess import preprocess_dataset

    rows = [{"prompt": "word " * 80, "completion": "more " * 40}, {"prompt": "short", "completion": "ok"}]
    args = DataArguments(canvas_length=16, truncation="truncate", max_prompt_length=512)
    with pytest.warns(UserWarning, match="position limit"):
        out, stats = preprocess_dataset(rows, tokenizer, args, max_length=48)
    assert stats.truncated_to_position_limit == 1 and stats.truncated_response == 1
    assert max(len(p) for p in out["prompt_ids"]) + 16 <= 48
    with pytest.raises(ValueError, match="canvas_length=16 leaves no room for a prompt: the model has 16 positions"):
        preprocess_dataset(rows, tokenizer, args, max_length=16)


def test_resume_true_means_the_last_checkpoint(tmp_path):
    from hf_mdlm.hub import OutputFolderError, resolve_resume

    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(True, tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("false", tmp_path) is None and resolve_resume(None, tmp_path) is None
    assert resolve_resume(str(tmp_path / "checkpoint-2"), tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(OutputFolderError, match="no such checkpoint folder"):
        resolve_resume(str(tmp_path / "checkpoint-3"), tmp_path)


@pytest.mark.parametrize("script,argv", [
    ("evaluate", ["--model", "m", "--output_dir", "o", "--canvas_length", "0"]),
    ("evaluate", ["--model", "m", "--output_dir", "o", "--batch_size", "0"]),
    ("generate", ["--model", "m", "--prompt", "x", "--batch_size", "0"]),
])
def test_zero_sizes_are_errors(script, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example(script).main(argv)
    assert exit_info.value.code == 2
    assert "must be an integer >= 1, got 0" in capsys.readouterr().err


def test_slack_ctc_blames_the_model_for_a_minus_inf_target():
    from hf_mdlm import slack_ctc_loss

    vocab, mask, slack = 8, 7, 6
    clean = torch.tensor([[1, 2, 3, 4]])
    noised = torch.tensor([[1, mask, 3, mask]])
    loss_mask = torch.ones_like(clean, dtype=torch.bool)
    logits = torch.zeros(1, 4, vocab)
    assert torch.isfinite(slack_ctc_loss(logits, noised, clean, mask_token_id=mask, slack_token_id=slack,
                                         loss_mask=loss_mask)).all()
    logits[0, 1, 2] = float("-inf")  # the model forbids the token the target needs at a masked position
    logits[0, 1, slack] = float("-inf")
    with pytest.raises(ValueError, match="the model gives log-probability -inf to tokens the target needs"):
        slack_ctc_loss(logits, noised, clean, mask_token_id=mask, slack_token_id=slack, loss_mask=loss_mask)
    inconsistent = torch.tensor([[5, mask, 3, mask]])  # a pinned token that is not the target's
    with pytest.raises(ValueError, match="inconsistent"):
        slack_ctc_loss(torch.zeros(1, 4, vocab), inconsistent, clean, mask_token_id=mask, slack_token_id=slack,
                       loss_mask=loss_mask)


def test_loading_a_saved_folder_does_not_warn_about_the_model_type(tokenizer, tmp_path):
    """AutoTokenizer read our config.json as a generic config and warned "a model of type `mdlm` to instantiate a
    model of type ``" on every load; the loader hands it our config instead."""
    import logging

    from transformers.utils import logging as hf_logging

    from hf_mdlm.loading import load_for_inference

    folder = tmp_path / "model"
    tiny_model_for(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    messages = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    old = hf_logging.get_verbosity()
    hf_logging.get_logger().addHandler(handler)
    hf_logging.set_verbosity_warning()
    try:
        model, loaded = load_for_inference(str(folder))
    finally:
        hf_logging.get_logger().removeHandler(handler)
        hf_logging.set_verbosity(old)
    assert len(loaded) == len(tokenizer) and loaded.mask_token_id == tokenizer.mask_token_id
    assert not [m for m in messages if "model of type" in m], messages
