"""Shared fixtures and helpers: the tiny fixtures' paths, a tiny MDLM (tiny_config, make_model) and a tokenizer
of its ids, the converted LLaDA / Dream / LLaDA-MoE fixtures, the bundled tokenizer with a tiny model sized to it,
and a trained-looking model exported as a Hub folder and as a LoRA adapter."""

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

FIXTURES = Path(__file__).parent / "fixtures"
LLADA_TINY = FIXTURES / "llada-tiny"
LLADA2_TINY, SDAR_TINY = FIXTURES / "llada2-tiny", FIXTURES / "sdar-tiny"
DREAM_TINY, LLADA_MOE_TINY = FIXTURES / "dream-tiny", FIXTURES / "llada-moe-tiny"
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "hf_mdlm" / "data" / "bundled" / "tokenizer"
MASK, SLACK, EOS, PAD = 95, 94, 93, 92  # the special ids of tiny_config


def tiny_config(**overrides):
    from hf_mdlm import MDLMConfig

    values = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        mask_token_id=95,
        slack_token_id=94,
        eos_token_id=93,
        pad_token_id=92,
    )
    values.update(overrides)
    return MDLMConfig(**values)


@pytest.fixture
def tiny_model():
    from hf_mdlm import MDLMForMaskedLM

    torch.manual_seed(0)
    return MDLMForMaskedLM(tiny_config()).eval()


@pytest.fixture(scope="session")
def llada_converted(tmp_path_factory):
    """The LLaDA-tiny fixture converted once per test session into an hf_mdlm folder."""
    from hf_mdlm import convert_llada_checkpoint

    out = tmp_path_factory.mktemp("llada-converted")
    convert_llada_checkpoint(LLADA_TINY, out)
    return out


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    """The Dream-tiny fixture converted once per test module, as a model in eval mode."""
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.convert import convert_dream_checkpoint

    out = tmp_path_factory.mktemp("dream")
    convert_dream_checkpoint(DREAM_TINY, out)
    return MDLMForMaskedLM.from_pretrained(out).eval()


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """The LLaDA-MoE-tiny fixture converted once per test module, as a model in eval mode."""
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.convert import convert_llada_moe_checkpoint

    out = tmp_path_factory.mktemp("llada-moe")
    convert_llada_moe_checkpoint(LLADA_MOE_TINY, out, mask_token_id=303)
    return MDLMForMaskedLM.from_pretrained(out).eval()


# ---- a tiny MDLM and a tokenizer of its vocabulary


def make_model(seed=0, **config_overrides):
    """A tiny MDLM (tiny_config) in eval mode, its weights drawn from `seed`."""
    from hf_mdlm import MDLMForMaskedLM

    torch.manual_seed(seed)
    return MDLMForMaskedLM(tiny_config(**config_overrides)).eval()


def make_tokenizer(path):
    """A word-level tokenizer ("w0" ... "w91") with tiny_config's special ids, saved to `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(92)}
    specials = {"<pad>": PAD, "<eos>": EOS, "<slack>": SLACK, "[MASK]": MASK}
    backend = Tokenizer(models.WordLevel({**words, **specials}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", mask_token="[MASK]",
                                  unk_token="w0", extra_special_tokens=["<slack>"])
    tok.padding_side = "left"
    tok.save_pretrained(path)
    return tok


# ---- the bundled tokenizer and a tiny model sized to it


@pytest.fixture(scope="module")
def tokenizer():
    """The bundled tokenizer (hf_mdlm/data/bundled/tokenizer), loaded once per test module."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def tiny_model_for(tokenizer, seed=0, **overrides):
    """A tiny MDLM sized to `tokenizer` whose samples are text (8 new tokens, 8 steps)."""
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
    """A saved folder of `tiny_model_for(tokenizer)` and the tokenizer, once per test module."""
    folder = tmp_path_factory.mktemp("model")
    tiny_model_for(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- a trained-looking model exported as a Hub folder and as a LoRA adapter (test_hub.py, test_examples.py)

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


def trained_looking_model(tokenizer, seed=0):
    """A tiny MDLM sized to the bundled tokenizer, whose head never proposes a special token (so it prints text)."""
    from hf_mdlm import MDLMForMaskedLM

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
    from hf_mdlm.hub import export_for_hub

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
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.hub import export_for_hub

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


@pytest.fixture
def hub_calls(monkeypatch):
    """Replace every HfApi method push_to_hub could use by a recorder."""
    from huggingface_hub import HfApi

    calls = []

    def recorder(name):
        def record(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return SimpleNamespace(commit_url=f"https://huggingface.co/{REPO}/commit/0", repo_id=REPO, private=True)
        return record

    for name in ("create_repo", "create_commit", "upload_folder", "create_branch", "upload_file", "repo_info"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    monkeypatch.setattr("hf_mdlm.hub.outputs.hub_offline", lambda: False)  # the fakes are a reachable Hub
    return calls


# ---- the block-diffusion fixtures (LLaDA2, SDAR)


def block_fixture_reference(folder):
    """(reference tensors, generation cases) of a fixture made with its family's own code."""
    import json

    from safetensors.torch import load_file

    return (load_file(str(folder / "reference_outputs.safetensors")),
            json.loads((folder / "generation_cases.json").read_text()))


def converted(tmp_path_factory, folder, **kwargs):
    """A fixture folder of another family converted (`hf_mdlm.convert.convert_checkpoint`), as a model in eval mode."""
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.convert import convert_checkpoint

    out = tmp_path_factory.mktemp(folder.name)
    convert_checkpoint(folder, out, **kwargs)
    return MDLMForMaskedLM.from_pretrained(out).eval()


@contextlib.contextmanager
def block_size_set(model, block_size):
    """The block fixtures sample one model with several block lengths: its attention blocks follow inside the
    `with`, and are restored after it (the converted model is shared by a test module)."""
    saved, model.config.block_size = model.config.block_size, block_size
    try:
        yield model
    finally:
        model.config.block_size = saved


def padded_fixture_rows_match_alone(model, folder, pad, **settings):
    """`padded_rows_match_alone` on a block fixture's prompts cut to several lengths (whole, 6, 9, 3: different
    offsets in blocks of 4), with blocks of 4."""
    base = block_fixture_reference(folder)[0]["gen_prompts"].tolist()
    prompts = [base[0], base[1][:6], base[2][:9], base[0][:3]]
    with block_size_set(model, 4):
        padded_rows_match_alone(model, prompts, pad, max_new_tokens=10, block_length=4, block_alignment="absolute",
                                schedule="block", steps=12, threshold=0.5, **settings)


def padded_rows_match_alone(model, prompts, pad, **settings):
    """Generate a left-padded batch of `prompts`, then each prompt alone: the generated tokens must be equal (greedy
    and sampled with per-row seeds)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    seeds = list(range(5, 5 + len(prompts)))
    for sampled in (dict(temperature=0.0), dict(temperature=0.9, generator=seeds)):
        batch = model.generate(ids, attention_mask=mask, **settings, **sampled)
        assert batch.shape == (len(prompts), width + settings["max_new_tokens"])
        for row, prompt in enumerate(prompts):
            alone = dict(sampled, generator=[seeds[row]]) if "generator" in sampled else sampled
            single = model.generate(torch.tensor([prompt]), **settings, **alone)
            assert batch[row, width:].tolist() == single[0, len(prompt):].tolist(), (row, sampled)
