"""Tests of `hf_mdlm/convert/`: LLaDA, LLaDA-MoE and Dream checkpoints convert into models that compute their own
code's logits (tests/fixtures/*/README.md), unrepresentable configs and tensors are refused by name, original
folders convert once on the fly, and every family goes through the whole pipeline (A2D: test_convert_a2d.py)."""

import json
import re
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_mdlm import MDLMForMaskedLM, convert_llada_checkpoint
from hf_mdlm.convert import (
    a2d_config_to_mdlm,
    convert_checkpoint,
    detect_family,
    dream_config_to_mdlm,
    llada2_config_to_mdlm,
    llada_config_to_mdlm,
    llada_moe_config_to_mdlm,
    main,
    sdar_config_to_mdlm,
)
from hf_mdlm.data import DataArguments, DiffusionCollator
from hf_mdlm.evaluation import elbo_perplexity
from hf_mdlm.generation_mdlm import MDLMGenerationConfig
from hf_mdlm.hub import check_hub_folder, export_for_hub, save_model_folder
from hf_mdlm.training.arguments import MDLMTrainingArguments
from hf_mdlm.training.trainer import MDLMTrainer
from conftest import FIXTURES, LLADA_TINY
from conftest import DREAM_TINY as DREAM
from conftest import LLADA_MOE_TINY as MOE

REFERENCE = load_file(str(LLADA_TINY / "reference_outputs.safetensors"))
VOCAB = 320


def test_converted_logits_equal_llada_reference(llada_converted):
    model = MDLMForMaskedLM.from_pretrained(llada_converted).eval()
    with torch.no_grad():
        logits = model(REFERENCE["input_ids"]).logits
    assert (logits - REFERENCE["logits"]).abs().max() < 1e-4


def test_converted_logits_equal_llada_reference_with_padding(llada_converted):
    model = MDLMForMaskedLM.from_pretrained(llada_converted).eval()
    mask = REFERENCE["attention_mask"]
    with torch.no_grad():
        logits = model(REFERENCE["input_ids_padded"], attention_mask=mask).logits
    real = mask.bool()
    assert (logits[real] - REFERENCE["logits_padded"][real]).abs().max() < 1e-4


def test_config_mapping(llada_converted):
    config = json.loads((llada_converted / "config.json").read_text())
    assert config["mask_token_id"] == 299 and config["eos_token_id"] == 298
    assert config["num_hidden_layers"] == 2 and config["intermediate_size"] == 96
    assert config["rope_theta"] == 500000.0 and config["tie_word_embeddings"] is False
    generation = json.loads((llada_converted / "generation_config.json").read_text())
    assert generation["mask_token_id"] == 299 and generation["block_length"] == 32
    assert {"configuration_mdlm.py", "modeling_mdlm.py", "generation_mdlm.py"} <= {
        p.name for p in llada_converted.iterdir()
    }


def test_sharded_checkpoint_and_cli(tmp_path, capsys):
    """A LLaDA checkpoint split over two shards converts shard by shard into the same model."""
    src = tmp_path / "sharded"
    src.mkdir()
    shutil.copy(LLADA_TINY / "config.json", src / "config.json")
    state = load_file(str(LLADA_TINY / "model.safetensors"))
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(src / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, part in halves.items() for k in part}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))

    main(["llada", str(src), str(tmp_path / "out"), "--dtype", "float32"])
    assert re.search(r"peak resident memory [\d.]+ GiB for [\d.]+ GiB of weights", capsys.readouterr().out)
    out = tmp_path / "out"
    assert (out / "model.safetensors.index.json").exists()
    for name in halves:  # one output shard per input shard: the conversion streams
        with safe_open(str(out / name), "pt") as f:
            assert len(list(f.keys())) == len(halves[name])
    model = MDLMForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (model(REFERENCE["input_ids"]).logits - REFERENCE["logits"]).abs().max() < 1e-4


def test_dtype_cast(tmp_path):
    convert_llada_checkpoint(LLADA_TINY, tmp_path, dtype="bfloat16")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16


@pytest.mark.parametrize(
    "field, value",
    [("block_type", "sequential"), ("alibi", True), ("layer_norm_type", "default"), ("include_bias", True),
     ("activation_type", "gelu"), ("rope", False), ("scale_logits", True)],
)
def test_unrepresentable_config_is_refused_naming_the_field(field, value):
    config = json.loads((LLADA_TINY / "config.json").read_text())
    config[field] = value
    with pytest.raises(ValueError, match=field):
        llada_config_to_mdlm(config)


def test_unknown_tensor_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    state = load_file(str(src / "model.safetensors"))
    state["model.transformer.blocks.0.mystery.weight"] = torch.zeros(2)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="mystery"):
        convert_llada_checkpoint(src, tmp_path / "out")


def test_missing_tensor_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    state = load_file(str(src / "model.safetensors"))
    del state["model.transformer.blocks.1.up_proj.weight"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        convert_llada_checkpoint(src, tmp_path / "out")


def test_never_overwrites_source():
    with pytest.raises(ValueError, match="differ"):
        convert_llada_checkpoint(LLADA_TINY, LLADA_TINY)


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


def test_converter_config_errors_name_the_problem(tmp_path):
    moe = json.loads((FIXTURES / "llada-moe-tiny" / "config.json").read_text())
    with pytest.raises(ValueError, match="names no mask token .* pass mask_token_id .*config.json.*tokenizer"):
        llada_moe_config_to_mdlm(moe)
    with pytest.raises(ValueError, match=r"\[MASK\] from config.json's mask_token_id: id=400 is not a token id"):
        llada_moe_config_to_mdlm({**moe, "mask_token_id": 400})
    dream = json.loads((FIXTURES / "dream-tiny" / "config.json").read_text())
    with pytest.raises(ValueError, match="Dream config has no mask_token_id"):
        dream_config_to_mdlm({**dream, "mask_token_id": None})
    llada2 = json.loads((FIXTURES / "llada2-tiny" / "config.json").read_text())
    with pytest.raises(ValueError, match="LLaDA2's config names no mask token .* pass mask_token_id"):
        llada2_config_to_mdlm(llada2)
    with pytest.raises(ValueError, match="score_function"):
        llada2_config_to_mdlm({**llada2, "score_function": "softmax"}, mask_token_id=319)
    sdar = json.loads((FIXTURES / "sdar-tiny" / "config.json").read_text())
    with pytest.raises(ValueError, match="SDAR config field 'block_size'=None: an SDAR checkpoint names its block size"):
        sdar_config_to_mdlm({**sdar, "block_size": None})
    with pytest.raises(ValueError, match="A2D converts llama, mistral, qwen2, qwen3 causal LMs, not model_type='gpt2'"):
        a2d_config_to_mdlm({"model_type": "gpt2"}, 10, 1, 2)
    qwen3 = {"model_type": "qwen3", "hidden_act": "silu", "layer_types": ["full_attention", "sliding_attention"]}
    with pytest.raises(ValueError, match=r"'layer_types' has \['sliding_attention'\] layers"):
        a2d_config_to_mdlm(qwen3, 10, 1, 2)
    with pytest.raises(ValueError, match="no conversion for family 'mdlm'; converters: llada, llada-moe, dream, llada2, sdar, a2d"):
        convert_checkpoint(FIXTURES / "dream-tiny", tmp_path / "out", family="mdlm")


def test_unknown_family_lists_the_supported_ones():
    with pytest.raises(ValueError, match="supported: mdlm, llada, llada-moe, dream, llada2, sdar, a2d"):
        detect_family({"model_type": "bert", "architectures": ["BertModel"]})


# ----------------------------------------------------------------------------- Dream and LLaDA-MoE logits


@pytest.mark.parametrize("family", ["dream", "moe"])
def test_logits_equal_the_reference(family, request):
    model = request.getfixturevalue(family)
    ref = load_file((DREAM if family == "dream" else MOE) / "reference_outputs.safetensors")
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits
        padded = model(input_ids=ref["input_ids_padded"], attention_mask=ref["attention_mask"]).logits
    assert (logits - ref["logits"]).abs().max() < 1e-4
    real = ref["attention_mask"].bool()
    assert (padded[real] - ref["logits_padded"][real]).abs().max() < 1e-4


def test_moe_router_logits_equal_the_reference(moe):
    ref = load_file(MOE / "reference_outputs.safetensors")
    seen = {}
    for index in (1, 2):
        moe.model.layers[index].mlp.router.register_forward_hook(
            lambda module, args, out, index=index: seen.__setitem__(index, out))
    with torch.no_grad():
        moe(input_ids=ref["input_ids"])
    for index in (1, 2):
        assert (seen[index] - ref[f"router_logits_layer{index}"]).abs().max() < 1e-4
    assert type(moe.model.layers[0].mlp).__name__ == "MDLMMLP"  # moe_layer_freq [0, 1, 1]


# ----------------------------------------------------------------------------- original folders converted on the fly


def test_a_conversion_made_by_other_converter_code_is_made_again(tmp_path, monkeypatch):
    """The cache key held the source's files only: a conversion by an older (perhaps wrong) converter outlived its
    fix."""
    from hf_mdlm.convert import families

    monkeypatch.setenv("HF_MDLM_CACHE", str(tmp_path / "cache"))
    first = families.native_folder(str(DREAM))
    assert families.native_folder(str(DREAM)) == first
    monkeypatch.setattr(families, "_converter_digest", lambda: "other converters")
    assert families.native_folder(str(DREAM)) != first


def test_a_causal_lm_of_a_family_not_converted_is_refused(tmp_path):
    """Loaded as a masked LM, a Mistral-with-sliding-window or Phi-3 folder lost its LM head (an unexpected weight)."""
    from hf_mdlm.convert import native_folder

    folder = tmp_path / "phi"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}))
    with pytest.raises(ValueError, match=f"{folder}: config.json with model_type='phi3' .* is not a family"):
        native_folder(str(folder))


def test_original_folders_are_converted_once_on_the_fly(tmp_path, monkeypatch, caplog):
    """generate.py / evaluate.py / finetune.py / the lm-eval adapter take a Dream (LLaDA, LLaDA-MoE, causal LM)
    folder as it is: converted once into the cache, reused after."""
    import logging

    from hf_mdlm.data import bundled_corpus_files
    from hf_mdlm.loading import load_for_inference

    monkeypatch.setenv("HF_MDLM_CACHE", str(tmp_path / "cache"))
    tokenizer = bundled_corpus_files()["tokenizer"]
    with caplog.at_level(logging.INFO, logger="hf_mdlm.convert.families"):
        model, _ = load_for_inference(str(DREAM), tokenizer=str(tokenizer))
        again, _ = load_for_inference(str(DREAM), tokenizer=str(tokenizer))
    assert "converting the dream checkpoint" in caplog.text and "using the conversion" in caplog.text
    assert len([p for p in (tmp_path / "cache" / "converted").iterdir() if p.suffix != ".lock"]) == 1
    ref = load_file(DREAM / "reference_outputs.safetensors")
    with torch.no_grad():
        assert (model(input_ids=ref["input_ids"]).logits - ref["logits"]).abs().max() < 1e-4
    assert again.config.prediction_alignment == "next_token" and again.generation_config.schedule == "dream"


def _convert_in_a_process(source, cache, barrier, results):
    """One rank of a launcher: both call native_folder on the same unconverted folder at the same moment."""
    import logging
    import os

    os.environ["HF_MDLM_CACHE"] = cache
    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    from hf_mdlm.convert import families

    families.logger.addHandler(Keep())
    families.logger.setLevel(logging.INFO)
    barrier.wait()
    path = families.native_folder(source)
    results.put((path, any(m.startswith("converting the") for m in messages)))


def test_two_processes_converting_the_same_checkpoint_make_one_entry(tmp_path):
    """Two real processes race to convert one LLaDA folder: one converts, the other waits and reuses it; both get
    the same complete folder, and the cache holds one entry and no staging leftovers."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    source = str(LLADA_TINY)
    workers = [context.Process(target=_convert_in_a_process, args=(source, str(tmp_path), barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]  # a crashed rank fails here, at once
    outcomes = [results.get(timeout=10) for _ in workers]
    (first, converted_first), (second, converted_second) = outcomes
    assert first == second and converted_first + converted_second == 1
    entries = sorted(p.name for p in (tmp_path / "converted").iterdir())
    assert [e for e in entries if not e.endswith(".lock")] == [Path(first).name]
    assert (Path(first) / "config.json").exists() and (Path(first) / "model.safetensors").exists()


# ----------------------------------------------------------------------------- the [MASK] of LLaDA-MoE and LLaDA2

# Their config.json names no [MASK] and the released models' (156895) is outside the fixtures' 320 ids.
_MASKLESS = {"llada-moe": (FIXTURES / "llada-moe-tiny", 300), "llada2": (FIXTURES / "llada2-tiny", 317)}  # + eos


def _maskless_copy(tmp_path, family, tokenizer_mask=None, config_mask=None):
    """A copy of the family's fixture with a tokenizer whose mask token has id `tokenizer_mask` and/or a
    "mask_token_id" in its config.json."""
    fixture, eos = _MASKLESS[family]
    src = tmp_path / fixture.name
    shutil.copytree(fixture, src)
    if tokenizer_mask is not None:
        _tokenizer(tokenizer_mask, 302, eos).save_pretrained(src)
    if config_mask is not None:
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "mask_token_id": config_mask}))
    return src


@pytest.mark.parametrize("family", ["llada-moe", "llada2"])
def test_the_mask_id_is_the_argument_else_config_json_else_the_tokenizers(tmp_path, family):
    src = _maskless_copy(tmp_path, family, tokenizer_mask=303)
    assert convert_checkpoint(src, tmp_path / "tokenizer", family).mask_token_id == 303
    assert MDLMGenerationConfig.from_pretrained(tmp_path / "tokenizer").mask_token_id == 303
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "mask_token_id": 304}))
    assert convert_checkpoint(src, tmp_path / "config", family).mask_token_id == 304
    assert convert_checkpoint(src, tmp_path / "argument", family, mask_token_id=305).mask_token_id == 305


def test_the_tokenizers_mask_is_read_from_its_json_files(tmp_path, caplog):
    """The mask token named by special_tokens_map.json (an AddedToken) or tokenizer_config.json, its id from the
    tokenizer's JSON files; the folder's tokenizer code (auto_map) never runs."""
    import logging

    from hf_mdlm.convert.common import tokenizer_mask_token_id

    (tmp_path / "tokenization_x.py").write_text("raise RuntimeError('the source code ran')\n")
    settings = {"auto_map": {"AutoTokenizer": [None, "tokenization_x.X"]}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    assert tokenizer_mask_token_id(tmp_path) is None  # no mask token named
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": {"content": "<|mask|>"}}))
    settings["added_tokens_decoder"] = {"7": {"content": "<|mask|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    assert list(tokenizer_mask_token_id(tmp_path).values()) == [7]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "mask_token": "<m>"}))
    (tmp_path / "vocab.json").write_text(json.dumps({"<m>": 9}))
    assert list(tokenizer_mask_token_id(tmp_path).values()) == [9]
    (tmp_path / "vocab.json").unlink()
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.convert.common"):
        assert tokenizer_mask_token_id(tmp_path) is None
    assert "names the mask token '<m>'" in caplog.text


@pytest.mark.parametrize("family", ["llada-moe", "llada2"])
def test_a_smaller_checkpoint_converts_on_the_fly_with_its_own_mask(tmp_path, monkeypatch, family):
    """examples/finetune.py converts through native_folder, which takes no mask_token_id: the folder names it."""
    from hf_mdlm.convert.families import native_folder
    from hf_mdlm.hub.remote_code import load_tokenizer

    monkeypatch.setenv("HF_MDLM_CACHE", str(tmp_path / "cache"))
    src = _maskless_copy(tmp_path, family, tokenizer_mask=319)
    folder = native_folder(str(src))
    assert MDLMForMaskedLM.from_pretrained(folder).config.mask_token_id == 319
    assert load_tokenizer(folder).mask_token_id == 319
    config_named = native_folder(str(_maskless_copy(tmp_path / "config", family, config_mask=303)))
    assert json.loads((Path(config_named) / "config.json").read_text())["mask_token_id"] == 303


# ----------------------------------------------------------------------------- every family through the pipeline


def _tokenizer(mask_id, slack_id, eos_id):
    """A word-level tokenizer over the fixtures' 320 ids ("t0" ... "t319"), the special ids where the model has them."""
    names = {mask_id: "[MASK]", slack_id: "<slack>", eos_id: "<eos>"}
    vocab = {names.get(i, f"t{i}"): i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, mask_token="[MASK]", eos_token="<eos>",
                                        pad_token="<eos>", extra_special_tokens=["<slack>"])
    assert tokenizer.convert_tokens_to_ids("<slack>") == slack_id
    return tokenizer


def _source(tmp_path, family):
    if family != "a2d":
        return {"llada": FIXTURES / "llada-tiny", "llada-moe": FIXTURES / "llada-moe-tiny",
                "dream": FIXTURES / "dream-tiny"}[family]
    torch.manual_seed(0)
    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64, eos_token_id=300)).save_pretrained(folder)
    _tokenizer(301, 302, 300).save_pretrained(folder)  # A2D reuses the tokenizer's [MASK] and <slack>
    return folder


def _rows(eos, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"prompt_ids": torch.randint(5, 250, (4,), generator=g).tolist(),
             "response_ids": torch.randint(5, 250, (5,), generator=g).tolist() + [eos]} for _ in range(n)]


@pytest.mark.parametrize("family", ["llada", "llada-moe", "dream", "a2d"])
def test_fine_tune_evaluate_sample_and_export(tmp_path, family):
    extra = {"mask_token_id": 303} if family == "llada-moe" else {}
    convert_checkpoint(_source(tmp_path, family), tmp_path / "converted", family, **extra)
    model = MDLMForMaskedLM.from_pretrained(tmp_path / "converted")
    config = model.config
    if config.slack_token_id is None:  # the originals have no <slack>: an unused id takes its place here
        config.slack_token_id = 302 if config.mask_token_id != 302 else 304
    eos = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
    tokenizer = _tokenizer(config.mask_token_id, config.slack_token_id, eos)
    rows = _rows(eos)
    args = MDLMTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                                 learning_rate=1e-3, report_to="none", save_strategy="no", logging_steps=1,
                                 use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, slack_prob=0.3)
    trainer = MDLMTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                          data_collator=DiffusionCollator(pad_token_id=eos, canvas_length=10))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss_ctc" in entry]
    assert logged and all(math.isfinite(entry["loss_ctc"]) for entry in logged)
    elbo = elbo_perplexity(model.eval(), rows, num_samples=2, canvas_length=10, batch_size=4)
    assert math.isfinite(elbo["perplexity"])
    out = model.generate(torch.tensor([rows[0]["prompt_ids"]]), max_new_tokens=8, steps=8, block_length=8)
    assert not (out[0, 4:] == config.mask_token_id).any()
    folder = export_for_hub(model, tokenizer, tmp_path / "hub", repo_id=f"me/{family}-slack-ctc",
                            trainer_state=trainer.state)
    assert check_hub_folder(folder) == []
    # the folder finetune.py saves keeps the family's sampling defaults, resized to the training canvas
    save_model_folder(trainer, tokenizer, tmp_path / "out", DataArguments(canvas_length=10))
    base = MDLMGenerationConfig.from_pretrained(tmp_path / "converted")
    saved = MDLMGenerationConfig.from_pretrained(tmp_path / "out")
    for name in ("schedule", "remasking", "temperature", "top_p", "top_k", "cfg_scale", "threshold"):
        assert getattr(saved, name) == getattr(base, name), name
    assert (saved.max_new_tokens, saved.steps) == (10, round(10 * base.steps / base.max_new_tokens))
    assert saved.block_length == (math.gcd(10, base.block_length) if base.block_length else None)
    assert saved.slack_token_id == config.slack_token_id and saved.suppress_slack  # trained with <slack>


def test_the_converter_writes_only_into_a_new_empty_or_earlier_conversion_folder(tmp_path):
    """`python -m hf_mdlm.convert` used to write into any folder; now the destination is locked, must be new or
    empty, and `--overwrite` replaces an earlier conversion only (another folder's files are never deleted)."""
    out = tmp_path / "out"
    main(["llada", str(LLADA_TINY), str(out)])
    with pytest.raises(SystemExit, match="dst_dir .* is not empty .*pass --overwrite"):
        main(["llada", str(LLADA_TINY), str(out)])
    main(["llada", str(LLADA_TINY), str(out), "--overwrite"])
    assert (out / "config.json").exists()
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="this command does not write \\(my_notes.txt\\); nothing was deleted"):
        main(["llada", str(LLADA_TINY), str(out), "--overwrite", "true"])
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "model.safetensors").exists()


def _files(folder):
    """Every entry under `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_the_converter_never_writes_into_or_around_its_source(tmp_path):
    """`convert a2d SRC SRC --overwrite` deleted the source (its files have the names a conversion writes) and then
    failed on the missing config.json; a destination inside the source was accepted. Each is now refused first."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "model.safetensors"):  # only names --overwrite would delete
        shutil.copy(LLADA_TINY / name, src / name)
    before = _files(src)
    with pytest.raises(SystemExit, match=re.escape(f"dst_dir {src} is src_dir {src}: choose a folder apart")):
        main(["llada", str(src), str(src), "--overwrite"])
    with pytest.raises(SystemExit, match=re.escape(f"dst_dir {src / 'sub'} lies inside src_dir {src}")):
        main(["llada", str(src), str(src / "sub")])
    with pytest.raises(SystemExit, match=re.escape(f"dst_dir {tmp_path} contains src_dir {src}")):
        main(["llada", str(src), str(tmp_path), "--overwrite"])
    assert _files(src) == before  # byte for byte, and no lock or staging folder left in it


def test_the_converter_refuses_a_missing_source_before_creating_dst(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=re.escape(f"src_dir {tmp_path / 'nope'} does not exist")):
        main(["llada", str(tmp_path / "nope"), str(out)])
    assert not out.exists()


def test_the_converter_refuses_another_familys_checkpoint_before_creating_dst(tmp_path, llada_converted):
    """`convert dream <a LLaDA folder>` failed deep in the Dream converter (KeyError 'hidden_size') and left a
    staging folder and a lock behind; it now names the family and the command to use, before creating anything."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=re.escape(f"{LLADA_TINY} is a llada checkpoint, not dream: use "
                                                   f"`python -m hf_mdlm.convert llada {LLADA_TINY} {out}`")):
        main(["dream", str(LLADA_TINY), str(out)])
    with pytest.raises(SystemExit, match="is already an hf_mdlm folder"):
        main(["llada", str(llada_converted), str(out)])
    assert not out.exists()


def test_a_refused_conversion_leaves_nothing_behind(tmp_path):
    """A conversion refused once under way (here: no [MASK] id) removes its staging folder, and the folder it made;
    the hint names the command's flag."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="pass --mask_token_id"):
        main(["llada-moe", str(MOE), str(out)])
    assert not out.exists()
    out.mkdir()  # a folder the user made is kept, empty of our files
    with pytest.raises(SystemExit, match="pass --mask_token_id"):
        main(["llada-moe", str(MOE), str(out)])
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_conversion_killed_at_any_moment_leaves_nothing_that_loads(tmp_path):
    """`python -m hf_mdlm.convert` SIGKILLed at 12 random moments: each destination holds the complete conversion
    or no config.json, and converting again into it reports the leftover, removes it and succeeds."""
    from kill_points import killed_runs

    def convert(folder):
        main(["llada", str(LLADA_TINY), str(folder)])

    for folder in killed_runs(convert, [tmp_path / f"out{i}" for i in range(13)], seed=3):
        if (folder / "config.json").exists():
            assert MDLMForMaskedLM.from_pretrained(folder) is not None
            continue
        visible = [p.name for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []
        main(["llada", str(LLADA_TINY), str(folder)] + (["--overwrite"] if visible else []))
        assert not (folder / ".hf_mdlm-saving").exists() and MDLMForMaskedLM.from_pretrained(folder) is not None


def test_a_tokenizer_that_names_its_own_code_converts_to_one_that_loads_without_it(tmp_path):
    """Dream's tokenizer_config.json names tokenization_dream.py (auto_map); the converted folder does not carry the
    code, so its tokenizer did not load (and would only have run with trust_remote_code)."""
    from conftest import TOKENIZER_DIR
    from transformers import AutoTokenizer

    from hf_mdlm.hub.remote_code import load_tokenizer

    src = tmp_path / "dream"
    shutil.copytree(FIXTURES / "dream-tiny", src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, src / name)
    settings = json.loads((src / "tokenizer_config.json").read_text())
    settings.update(tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_dream.DreamTokenizer"]})
    (src / "tokenizer_config.json").write_text(json.dumps(settings))
    (src / "tokenization_dream.py").write_text("raise RuntimeError('the source code ran')\n")
    convert_checkpoint(src, tmp_path / "out")
    converted = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert "auto_map" not in converted and converted["tokenizer_class"] == "PreTrainedTokenizerFast"
    text = "Now is the winter of our discontent"
    assert load_tokenizer(tmp_path / "out")(text).input_ids == AutoTokenizer.from_pretrained(TOKENIZER_DIR)(text).input_ids



def test_a_tokenizer_naming_its_code_without_standard_files_is_left_with_a_warning(tmp_path, caplog):
    import logging

    src = tmp_path / "dream"
    shutil.copytree(FIXTURES / "dream-tiny", src)
    settings = {"tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": [None, "tokenization_dream.X"]}}
    (src / "tokenizer_config.json").write_text(json.dumps(settings))
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.convert.common"):
        convert_checkpoint(src, tmp_path / "out")
    assert "names tokenizer code" in caplog.text and "pass --tokenizer_name when training" in caplog.text
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == settings
