"""Every family through the whole pipeline: a converted LLaDA, LLaDA-MoE, Dream and A2D (Llama) model fine-tunes with
CE + slack-CTC, is evaluated (ELBO), samples, and exports to a checked Hub folder."""

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_mdlm import MDLMForMaskedLM
from hf_mdlm.convert import convert_checkpoint
from hf_mdlm.data import DiffusionCollator
from hf_mdlm.evaluation import elbo_perplexity
from hf_mdlm.hub import check_hub_folder, export_for_hub
from hf_mdlm.training.arguments import MDLMTrainingArguments
from hf_mdlm.training.trainer import MDLMTrainer
from conftest import FIXTURES

VOCAB = 320


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
