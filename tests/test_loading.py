"""Tests of `hf_mdlm/loading.py` (and the policy of `hf_mdlm/hub/remote_code.py` it applies): an hf_mdlm folder
loads with the installed classes and none of its files runs, another model's code runs only with
trust_remote_code, missing weights are an error unless asked for, and a saved folder loads without warnings."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import TOKENIZER_DIR, tiny_model_for
from example_scripts import example


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


def _broken_header(path):
    data = path.read_bytes()
    path.write_bytes(data[:8] + b"{garbage" + data[16:])


@pytest.mark.parametrize("name, corrupt, message", [
    ("config.json", lambda p: p.write_text('{"model_type": "mdlm", "hid'), "config.json is not valid JSON"),
    ("generation_config.json", lambda p: p.write_text('{"steps": '), "generation_config.json is not valid JSON"),
    ("tokenizer.json", lambda p: p.write_text('{"version": '), "tokenizer.json is not valid JSON"),
    ("model.safetensors", _broken_header, "model.safetensors has a broken safetensors header"),
    ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-100]), "model.safetensors is truncated"),
])
def test_a_corrupt_file_of_a_model_folder_is_named_before_loading(model_folder, tmp_path, name, corrupt, message):
    """Each of these failed deep inside json/safetensors/transformers without naming the file, and a corrupt
    generation_config.json was dropped silently (the folder sampled with other settings)."""
    from hf_mdlm.loading import ModelArguments, load_for_inference, load_model_and_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    corrupt(folder / name)
    with pytest.raises(ValueError, match=f"model folder {folder} cannot be loaded: {message}"):
        load_for_inference(str(folder))
    with pytest.raises(ValueError, match=message):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=str(folder)), tmp_path / "out")


def test_an_adapter_folder_passed_as_a_model_says_what_it_is(adapter_exported, tmp_path, monkeypatch):
    """An adapter has no config.json: transformers followed its base's auto_map (and asked, interactively, to run
    that code) or the tokenizer check failed; now the adapter is named, with what to pass instead, as a folder or
    by its Hub id."""
    import huggingface_hub

    from hf_mdlm.loading import ModelArguments, load_for_inference, load_model_and_tokenizer
    from hub_cache import install_in_hf_cache

    folder = tmp_path / "adapter"
    shutil.copytree(adapter_exported.folder, folder)
    assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").exists()
    install_in_hf_cache(folder, "me/an-adapter", tmp_path / "hf_home")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    for name in (str(folder), "me/an-adapter"):
        for load in (lambda: load_for_inference(name),
                     lambda: load_model_and_tokenizer(ModelArguments(model_name_or_path=name), tmp_path / "out")):
            with pytest.raises(ValueError, match=f"^{name} is a LoRA adapter .* pass the merged model folder"):
                load()


def test_a_mistyped_folder_is_named_as_a_missing_folder(tmp_path):
    """transformers said "Repo id must be in the form 'repo_name' or 'namespace/repo_name'" for a path."""
    from hf_mdlm.evaluation import load_judge
    from hf_mdlm.loading import ModelArguments, load_for_inference, load_model_and_tokenizer

    missing = tmp_path / "runs" / "nomodel"
    for load in (lambda: load_for_inference(str(missing)), lambda: load_judge(str(missing)),
                 lambda: load_model_and_tokenizer(ModelArguments(model_name_or_path=str(missing)), tmp_path / "out")):
        with pytest.raises(FileNotFoundError, match=f"{missing} is not a model folder \\(no such folder\\)"):
            load()


def test_block_size_must_be_a_positive_integer():
    import torch

    from conftest import tiny_config
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.loading import set_block_size

    torch.manual_seed(0)
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="--block_size must be a positive integer"):
            set_block_size(MDLMForMaskedLM(tiny_config()), bad)
    assert set_block_size(MDLMForMaskedLM(tiny_config()), 4).config.block_size == 4


def test_all_linear_targets_every_linear_module_but_the_output_head():
    """PEFT's "all-linear" shorthand was refused as a pattern matching nothing."""
    import torch

    from conftest import tiny_config
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.loading import lora_targets

    for config in (tiny_config(), tiny_config(num_experts=4, moe_intermediate_size=16)):
        model = MDLMForMaskedLM(config)
        linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        assert "lm_head" in linear
        assert lora_targets(model, "all-linear") == [name for name in linear if name != "lm_head"]
    with pytest.raises(ValueError, match="match no Linear module"):
        lora_targets(model, "all-linear,nothing_here")


def test_tokenizer_code_does_not_run_even_when_someone_answers_yes(model_folder, tmp_path, monkeypatch):
    """The loaders passed trust_remote_code=None for an hf_mdlm folder's tokenizer, so transformers asked on stdin and
    a "y" ran the folder's tokenizer code (the same in the A2D converter and the judge loader)."""
    import builtins

    from hf_mdlm.hub.remote_code import load_tokenizer

    folder = tmp_path / "tokenizer-code"
    shutil.copytree(model_folder, folder)
    marker = tmp_path / "tokenizer-code-ran"
    (folder / "tokenization_canary.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\nclass CanaryTokenizer(PreTrainedTokenizerFast):\n"
        "    pass\n")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.update(auto_map={"AutoTokenizer": [None, "tokenization_canary.CanaryTokenizer"]},
                    tokenizer_class="CanaryTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    monkeypatch.setattr(builtins, "input", lambda *args: "y")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_tokenizer(str(folder))
    assert not marker.exists()
