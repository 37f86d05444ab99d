"""The scripts of `examples/` run as their users run them: finetune.py (end to end, two DDP processes against one,
LoRA, the Hub token never written, every output checked before the work), the shipped accelerate configs,
generate.py, evaluate.py and push_to_hub.py."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from hf_mdlm.hub import check_hub_folder, hub_files, save_run_record
from conftest import ADAPTER_REPO, BASE_REPO, FULL_FILES, REPO, TOKEN, TRAINER_STATE, make_model, make_tokenizer
from example_scripts import ROOT, TINY, example, launch_two_processes
from hub_cache import COMMIT, first_python_block

# the flags of the end-to-end finetune.py runs (example_scripts.TINY: the flags of the quick ones)
TINY_3_STEPS = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1",
                "--num_attention_heads", "2", "--max_steps", "3", "--logging_steps", "1", "--max_train_samples", "48",
                "--eval_strategy", "no", "--learning_rate", "0.01", "--report_to", "none",
                "--dataloader_num_workers", "0", "--disable_tqdm", "true"]


# ----------------------------------------------------------------------------- finetune.py


def finetune_script():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import finetune
    finally:
        sys.path.pop(0)
    return finetune


def run_finetune_in_process(argv):
    return finetune_script().main(argv)


def test_only_a_model_or_dataset_flag_drops_the_bundled_defaults():
    script = finetune_script()
    for argv in (["--dataset_cache_dir", "/tmp/c"], ["--dataset_config=x"], ["--max_steps", "3"]):
        assert script.with_bundled_defaults(argv)[: len(script.BUNDLED_DEFAULTS)] == script.BUNDLED_DEFAULTS
    for argv in (["--dataset", "d.jsonl"], ["--dataset=d.jsonl"], ["--model_name_or_path", "m"]):
        assert script.with_bundled_defaults(argv) == argv


def logged_losses(output_dir):
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    single = tmp_path / "single"
    run_finetune_in_process(TINY_3_STEPS + ["--output_dir", str(single), "--per_device_train_batch_size", "4",
                                    "--num_samples", "0"])
    ddp = tmp_path / "ddp"
    result = launch_two_processes("finetune", TINY_3_STEPS + ["--output_dir", str(ddp), "--per_device_train_batch_size",
                                                              "2", "--num_samples", "0"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single_losses, ddp_losses = logged_losses(single), logged_losses(ddp)
    assert len(ddp_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)


def test_bundled_default_path_saves_reloads_and_samples(tmp_path, capsys):
    """The no-argument job in miniature: train, save a Hub folder, reload with trust_remote_code, sample."""
    out = tmp_path / "bundled"
    run_finetune_in_process(TINY_3_STEPS + ["--output_dir", str(out), "--num_samples", "1", "--canvas_length", "16",
                                    "--text_response_length", "12"])
    printed = capsys.readouterr().out
    assert "training loss: first logged" in printed and "--- sample:" in printed
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_mdlm.py", "generation_mdlm.py", "configuration_mdlm.py",
            "generation_config.json", "tokenizer.json", "trainer_state.json"} <= names
    # trained with <slack> (the default slack_prob): greedy decoding leaves it out by default
    assert json.loads((out / "generation_config.json").read_text())["suppress_slack"] is True


def test_lora_keeps_new_token_rows_trainable_and_saves_adapter(tmp_path):
    out = tmp_path / "lora"
    run_finetune_in_process(TINY_3_STEPS + ["--output_dir", str(out), "--num_samples", "0", "--lora_r", "4",
                                    "--lora_target_modules", "q_proj,v_proj"])
    from safetensors import safe_open

    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        saved = list(f.keys())
    assert any("q_proj.lora_A" in n for n in saved) and any("v_proj.lora_B" in n for n in saved)
    assert not any("k_proj" in n or "base_layer" in n for n in saved)
    # the new [MASK]/<slack> rows of the embedding and of the untied LM head travel with the adapter
    assert any("trainable_tokens" in n and "embed_tokens" in n for n in saved)
    assert any("trainable_tokens" in n and "lm_head" in n for n in saved)
    assert (out / "model.safetensors").exists()  # the merged, self-contained model
    # the adapter's card applies the adapter's generation config to its base: the run's sampling defaults
    assert json.loads((out / "adapter" / "generation_config.json").read_text()) == json.loads(
        (out / "generation_config.json").read_text())


def test_lora_pattern_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="query_key_value"):
        run_finetune_in_process(TINY_3_STEPS + ["--output_dir", str(tmp_path), "--num_samples", "0", "--lora_r", "4",
                                        "--lora_target_modules", "q_proj,query_key_value"])


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
        # a private repository: what a --private upload checks (not recorded: it sends nothing)
        monkeypatch.setattr(HfApi, "repo_info", lambda api, *a, **k: __import__("types").SimpleNamespace(private=True))
        monkeypatch.setattr("hf_mdlm.hub.outputs.hub_offline", lambda: False)  # the fakes are a reachable Hub

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
    # a checkpoint samples as the final model does (before, it kept the base's defaults, e.g. 128 new tokens)
    generation = [{k: v for k, v in json.loads((folder / "generation_config.json").read_text()).items()
                   if k != "transformers_version"} for folder in (out / "checkpoint-2", out)]
    assert generation[0] == generation[1]

    # --resume_from_checkpoint true resumes from the last checkpoint of the output folder (item 8)
    resumed = script.main(TINY + ["--output_dir", str(out), "--max_steps", "3", "--save_strategy", "no",
                                  "--resume_from_checkpoint", "true"])
    assert resumed.args.resume_from_checkpoint == str(out / "checkpoint-2")
    assert resumed.state.global_step == 3
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps[:2] == [1, 2] and steps[-1] == 3  # the first two logs come from the checkpoint's state
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert not (out / ".hf_mdlm-saving").exists()


def no_work(monkeypatch, script):
    def fail(*args, **kwargs):
        raise AssertionError("the run started working before checking its outputs")
    monkeypatch.setattr(script, "load_model_and_tokenizer", fail)
    return script


def test_finetune_checks_every_output_before_the_work(tmp_path, monkeypatch):
    from hf_mdlm.hub import OutputFolderError, outputs

    script = no_work(monkeypatch, example("finetune"))
    offline = outputs.hub_offline
    monkeypatch.setattr(outputs, "hub_offline", lambda: False)  # the tests run offline; the first checks are others
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
    with pytest.raises(OutputFolderError, match="holds no complete checkpoint"):
        script.main(TINY + ["--output_dir", str(tmp_path / "run4"), "--resume_from_checkpoint", "true"])
    # a logging integration that cannot start (wandb not installed) would fail after the model and data loaded
    monkeypatch.setattr("transformers.integrations.integration_utils.is_wandb_available", lambda: False)
    with pytest.raises(OutputFolderError, match="--report_to wandb: WandbCallback requires wandb"):
        script.main(TINY + ["--output_dir", str(tmp_path / "run6"), "--report_to", "wandb"])
    # offline mode (HF_HUB_OFFLINE) would fail the upload after the whole run: refused first
    monkeypatch.setattr(outputs, "hub_offline", offline)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OutputFolderError, match="cannot upload in offline mode"):
        script.main(TINY + ["--output_dir", str(tmp_path / "run5"), "--push_to_hub", "true", "--hub_token", TOKEN])
    assert not (tmp_path / "run5-hub").exists()


def test_finetune_finds_a_read_only_output_folder_before_the_work(tmp_path, monkeypatch):
    """A read-only folder: made so with its mode where that binds (not root), else with the error a read-only
    filesystem gives (root writes through modes; this sandbox runs as root)."""
    import errno
    import pathlib

    from hf_mdlm.hub import OutputFolderError

    script = no_work(monkeypatch, example("finetune"))
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:
        write_bytes = pathlib.Path.write_bytes

        def read_only(path, data):
            if path.parent == folder:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return write_bytes(path, data)

        monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    try:
        with pytest.raises(OutputFolderError, match="read-only cannot be written"):
            script.main(TINY + ["--output_dir", str(folder)])
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []



def test_finetune_never_writes_over_or_around_what_it_reads(tmp_path, monkeypatch):
    """`--output_dir M --overwrite_output_dir` with `--model_name_or_path M` used to empty the model folder before
    loading it; an output folder that is, contains or lies inside the model, data or tokenizer is refused first."""
    from hf_mdlm.hub import OutputFolderError

    script = no_work(monkeypatch, example("finetune"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"text": "x"}\n')
    for argv, message in (
        (["--model_name_or_path", str(model), "--output_dir", str(model)], "is the --model_name_or_path path"),
        (["--model_name_or_path", str(model), "--output_dir", str(model / "out")], "lies inside the --model_name"),
        (["--model_name_or_path", str(model), "--output_dir", str(tmp_path)], "contains the --model_name_or_path"),
        (["--dataset", str(data), "--output_dir", str(data.parent)], "contains the --dataset path"),
        (["--tokenizer_name", str(model), "--output_dir", str(model)], "is the --tokenizer_name path"),
    ):
        with pytest.raises(OutputFolderError, match=message):
            script.main(TINY + argv + ["--overwrite_output_dir", "true"])
    assert (model / "config.json").read_text() == "{}" and data.exists()  # nothing deleted


# ----------------------------------------------------------------------------- the accelerate configs


CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"


@pytest.mark.parametrize(
    "name, kind, check",
    [
        ("single_gpu.yaml", DistributedType.NO, lambda c: c.num_processes == 1),
        ("ddp.yaml", DistributedType.MULTI_GPU, lambda c: c.num_processes > 1),
        ("fsdp.yaml", DistributedType.FSDP,
         lambda c: c.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "MDLMDecoderLayer"),
        ("deepspeed_zero2.yaml", DistributedType.DEEPSPEED, lambda c: c.deepspeed_config["zero_stage"] == 2),
        ("deepspeed_zero3.yaml", DistributedType.DEEPSPEED, lambda c: c.deepspeed_config["zero_stage"] == 3),
    ],
)
def test_config_parses(name, kind, check):
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == kind
    assert config.mixed_precision == "bf16"
    assert check(config)


def test_fsdp_wraps_a_class_that_exists():
    from hf_mdlm import modeling_mdlm

    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert hasattr(modeling_mdlm, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])


# ---------------------------------------------------------------------------------------------------- FSDP on CPU
# accelerate (1.15) turns a launch with fsdp.yaml into FSDP only on accelerators (its AcceleratorState switches
# MULTI_GPU / NPU / XPU / ... to FSDP, never MULTI_CPU): `accelerate launch --config_file fsdp.yaml --num_processes 2
# examples/finetune.py --use_cpu true` trains, in two processes, but as DDP over gloo, and `--cpu` runs one plain
# process. So on CPU the FSDP run is exercised below with torch's own FSDP2 (`fully_shard`, gloo), wrapped as
# fsdp.yaml says; examples/finetune.py under fsdp.yaml needs two GPUs.

FSDP_WORKER = r'''
import json, os, sys
import torch, torch.distributed as dist
from types import SimpleNamespace
from accelerate.commands.config.config_args import load_config_from_file
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoTokenizer, TrainerState
from hf_mdlm import MDLMConfig, MDLMForMaskedLM, modeling_mdlm
from hf_mdlm.data import DataArguments, bundled_corpus_files
from hf_mdlm.hub import gathered_state_dict, save_model_folder
from hf_mdlm.training.arguments import MDLMTrainingArguments
from hf_mdlm.training.losses import masked_cross_entropy

yaml_path, out_dir = sys.argv[1], sys.argv[2]
fsdp = load_config_from_file(yaml_path).fsdp_config
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
args = MDLMTrainingArguments(output_dir=out_dir, report_to="none", use_cpu=True)  # on every rank, as a Trainer's
config = MDLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    mask_token_id=63, max_position_embeddings=64)
torch.manual_seed(0)
model = MDLMForMaskedLM(config)
reference = MDLMForMaskedLM(config)
reference.load_state_dict(model.state_dict())
initial = {k: v.clone() for k, v in model.state_dict().items()}
layer_class = getattr(modeling_mdlm, fsdp["fsdp_transformer_layer_cls_to_wrap"])
wrapped = [m for m in model.modules() if isinstance(m, layer_class)]
for module in wrapped:
    fully_shard(module, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
fully_shard(model, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
sharded = all(isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0] for p in model.parameters())
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)

def loss_of(net, ids, masked):  # masked-diffusion CE, mean over the masked tokens of these rows
    noised = ids.masked_fill(masked, config.mask_token_id)
    return masked_cross_entropy(net(input_ids=noised).logits, ids, masked).sum() / masked.sum()

losses, reference_losses = [], []
generator = torch.Generator().manual_seed(1)
for step in range(3):  # every rank draws the global batch; each trains on its half, the reference on all of it
    ids = torch.randint(0, 63, (2 * world, 16), generator=generator)
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[:, ::2] = True  # the same number of masked tokens per row: the mean of the halves is the global mean
    mine = slice(2 * rank, 2 * rank + 2)
    loss = loss_of(model, ids[mine], masked[mine])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    losses.append(mean.item() / world)
    reference_loss = loss_of(reference, ids, masked)
    reference_loss.backward()
    reference_optimizer.step()
    reference_optimizer.zero_grad()
    reference_losses.append(reference_loss.item())
full = gathered_state_dict(model)  # every rank takes part in the gather, as in examples/finetune.py
if rank == 0:
    gap = max((full[k] - v).abs().max().item() for k, v in reference.state_dict().items() if k in full)
    moved = max((full[k] - v).abs().max().item() for k, v in initial.items() if k in full)
    # finetune.py's save: the main process writes the folder from the gathered weights; the unsharded reference,
    # saved by the same code as one process would, is what it must equal
    tokenizer = AutoTokenizer.from_pretrained(bundled_corpus_files()["tokenizer"])
    for name, net, weights in (("sharded", model, full), ("single", reference, None)):
        trainer = SimpleNamespace(model=net, args=args, state=TrainerState())
        save_model_folder(trainer, tokenizer, os.path.join(out_dir, name), DataArguments(canvas_length=16),
                          state_dict=weights)
    json.dump({"world": world, "sharded": sharded, "wrapped": len(wrapped), "losses": losses,
               "reference_losses": reference_losses, "max_weight_gap": gap, "max_weight_change": moved},
              open(os.path.join(out_dir, "fsdp_run.json"), "w"))
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_fsdp_config_trains_sharded_on_two_cpu_processes(tmp_path):
    """Two gloo processes shard a tiny MDLM as fsdp.yaml says (FSDP2, each MDLMDecoderLayer a unit), train three
    steps, match an unsharded single-process run on the same global batches, and save a model that reloads."""
    import json
    import os
    import subprocess
    import sys

    worker = tmp_path / "fsdp_worker.py"
    worker.write_text(FSDP_WORKER)
    out = tmp_path / "model"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", str(worker), str(CONFIGS / "fsdp.yaml"), str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = json.loads((out / "fsdp_run.json").read_text())
    assert run["world"] == 2 and run["sharded"] and run["wrapped"] == 2
    assert len(run["losses"]) == 3 and run["losses"] == pytest.approx(run["reference_losses"], rel=1e-4)
    assert run["max_weight_gap"] < 1e-4 and run["max_weight_change"] > 1e-3  # trained, as one process would

    import torch

    from hf_mdlm import MDLMForMaskedLM

    # the sharded run's folder is the one a single process writes: the same files, the same weights
    sharded, single = out / "sharded", out / "single"
    names = lambda folder: sorted(p.name for p in folder.iterdir() if p.name not in ("run_info.json",))  # noqa: E731
    assert names(sharded) == names(single) and "model.safetensors" in names(sharded)
    from safetensors.torch import load_file

    ours, theirs = load_file(sharded / "model.safetensors"), load_file(single / "model.safetensors")
    assert ours.keys() == theirs.keys() and max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-4
    model = MDLMForMaskedLM.from_pretrained(sharded)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 63, 4]])).logits).all()


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("torch").cuda.device_count() < 2,
    reason="examples/finetune.py under fsdp.yaml needs 2 GPUs: accelerate enables FSDP only on accelerators; on "
           "CPU the same launch runs DDP over gloo (the sharded CPU run: test_fsdp_config_trains_sharded_on_two_cpu_"
           "processes)")
def test_finetune_script_under_fsdp_yaml_on_two_gpus(tmp_path):
    import json
    import os
    import subprocess
    import sys

    root = CONFIGS.parent.parent
    tiny = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1",
            "--num_attention_heads", "2", "--max_steps", "3", "--logging_steps", "1", "--max_train_samples", "48",
            "--eval_strategy", "no", "--report_to", "none", "--num_samples", "0", "--per_device_train_batch_size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"),
         "--num_processes", "2", str(root / "examples" / "finetune.py"), *tiny, "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert len([entry for entry in history if "loss" in entry]) == 3
    assert (tmp_path / "out" / "config.json").exists()


# ----------------------------------------------------------------------------- generate.py and evaluate.py


def test_example_script_smoke(tmp_path, capsys):
    model = make_model()
    model.save_pretrained(tmp_path / "model")
    make_tokenizer(tmp_path / "model")
    spec = importlib.util.spec_from_file_location("example_generate", ROOT / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("w7 w8\n\nw9\n")
    texts = module.main(["--model", str(tmp_path / "model"), "--prompt", "w1 w2 w3", "--prompt_file", str(prompt_file),
                         "--max_new_tokens", "8", "--steps", "4", "--block_length", "4", "--temperature", "0.5",
                         "--seed", "0", "--suppress_slack", "true", "--output_history"])
    printed = capsys.readouterr().out
    assert printed.count("=== prompt") == 3
    assert printed.count("--- step") == 4  # one batch, 4 steps, first sequence
    assert len(texts) == 3 and all("<slack>" not in t and "[MASK]" not in t and "<eos>" not in t for t in texts)
    # With a chat template (applied unless --no_chat_template) and several samples per prompt.
    tok = make_tokenizer(tmp_path / "model")
    tok.chat_template = "{% for m in messages %}w1 {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w2{% endif %}"
    tok.save_pretrained(tmp_path / "model")
    texts = module.main(["--model", str(tmp_path / "model"), "--prompt", "w5 w6", "--max_new_tokens", "4",
                         "--steps", "2", "--num_return_sequences", "2", "--temperature", "1.0", "--seed", "1"])
    assert len(texts) == 2 and all("<slack>" not in t for t in texts)
    assert "sample 2/2" in capsys.readouterr().out


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


def test_generate_names_a_bad_setting_before_any_prompt_runs(model_folder, monkeypatch):
    """Flags that cannot work together or with the folder's saved settings exit with one line saying what to change,
    before generate() runs."""
    from hf_mdlm import MDLMForMaskedLM

    monkeypatch.setattr(MDLMForMaskedLM, "generate", lambda *a, **k: pytest.fail("generate() ran"))
    with pytest.raises(SystemExit, match="generation settings: block_length=5 must divide max_new_tokens=16: set a "
                                         "block_length"):
        example("generate").main(["--model", str(model_folder), "--prompt", "Hi", "--max_new_tokens", "16",
                                  "--block_length", "5"])
    with pytest.raises(SystemExit, match="generation settings: threshold must be in"):
        example("generate").main(["--model", str(model_folder), "--prompt", "Hi", "--threshold", "1.5"])


def test_evaluate_refuses_fast_samplers_without_a_judge(tmp_path):
    """Without a judge only the ELBO is computed, which no sampler changes: `--kv_cache dual` used to do nothing."""
    with pytest.raises(SystemExit, match="--fast_samplers compares .* needs --judge"):
        example("evaluate").main(["--model", str(tmp_path / "m"), "--output_dir", str(tmp_path / "o"),
                                  "--fast_samplers", "dual"])


def test_evaluate_refuses_to_run_in_several_processes(tmp_path, monkeypatch):
    """Under accelerate launch every process evaluated everything and the second failed on the first's folder lock
    ("in use by another run"), naming its sibling's pid."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="evaluate.py runs in one process"):
        example("evaluate").main(["--model", str(tmp_path / "m"), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_evaluate_checks_its_output_first(tmp_path, monkeypatch):
    a_file = tmp_path / "results"
    a_file.write_text("x")
    with pytest.raises(SystemExit, match="is a file"):
        example("evaluate").main(["--model", str(tmp_path / "no-such-model"), "--output_dir", str(a_file)])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match="matplotlib"):
        example("evaluate").main(["--model", "no-such-model", "--judge", "j", "--output_dir", str(tmp_path / "e")])


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


# ----------------------------------------------------------------------------- push_to_hub.py


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

    # --push_base: the converted base the adapter trained on is built (published, without --dry_run) first
    out = script.main(["--model_dir", str(run), "--repo_id", ADAPTER_REPO, "--adapter", "--push_base", "me/base",
                       "--dry_run", "--out_dir", str(tmp_path / "up-both")])
    base = tmp_path / "up-both-base"
    assert check_hub_folder(base) == [] and json.loads((base / "config.json").read_text())["model_type"] == "mdlm"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/base"
    assert 'AutoModel.from_pretrained("me/base"' in (out / "README.md").read_text() and hub_calls == []

    # the adapter folder itself as MODEL_DIR: the tokenizer and the records come from its run folder
    out = script.main(["--model_dir", str(run / "adapter"), "--repo_id", ADAPTER_REPO, "--base_model", BASE_REPO,
                       "--dry_run", "--out_dir", str(tmp_path / "up-adapter-dir")])
    assert check_hub_folder(out) == [] and (out / "tokenizer.json").exists() and (out / "trainer_state.json").exists()
    # an adapter that records no base (trained from scratch) has none to publish: said so, no TypeError
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(SystemExit, match="--push_base: the adapter records no base model"):
        script.main(["--model_dir", str(run), "--repo_id", ADAPTER_REPO, "--adapter", "--push_base", "me/base",
                     "--dry_run", "--out_dir", str(tmp_path / "up-nobase")])
    with pytest.raises(SystemExit, match=f"--model_dir {tmp_path / 'nowhere'} is not a folder"):
        script.main(["--model_dir", str(tmp_path / "nowhere"), "--repo_id", REPO])
    with pytest.raises(SystemExit, match="push_to_hub.py: .*missing.json"):  # a refused input is one line
        script.main(["--model_dir", str(run), "--repo_id", REPO, "--eval_results", str(tmp_path / "missing.json"),
                     "--dry_run", "--out_dir", str(tmp_path / "up-missing")])


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


# ----------------------------------------------------------------------------- the real path, rehearsed


REHEARSAL_SNIPPETS = r'''
import json, sys
import torch
snippets, probe = json.load(open(sys.argv[1])), torch.tensor([json.load(open(sys.argv[2]))])
logits = {}
for name, snippet in snippets.items():
    scope = {"__name__": "__main__"}
    exec(compile(snippet, name, "exec"), scope)  # the card's code, as a Hub user runs it (prints a sample)
    with torch.no_grad():
        logits[name] = scope["model"](input_ids=probe.to(scope["model"].device)).logits[0].tolist()
print(json.dumps(logits))
'''


def _llada_checkpoint_with_tokenizer(folder):
    """The LLaDA fixture as LLaDA publishes it (its own config format), with a word-level tokenizer: no <slack>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from conftest import LLADA_TINY

    shutil.copytree(LLADA_TINY, folder)
    vocab = {{298: "<eos>", 299: "[MASK]"}.get(i, f"w{i}"): i for i in range(320)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, mask_token="[MASK]", eos_token="<eos>",
                            pad_token="<eos>").save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_the_real_path_rehearsed_on_two_cpu_processes(tmp_path):
    """The README's recipe scaled down: an unconverted LLaDA checkpoint fine-tuned with LoRA by two processes under
    `accelerate launch` (both ranks ask for the conversion), saved, published as a model and as an adapter with its
    converted base (dry runs), both loaded by their cards' snippets where hf_mdlm is not installed (the same
    logits), and evaluated on a GSM8K-format task by two processes."""
    from hub_cache import install_in_hf_cache, last_json_line, run_without_hf_mdlm

    source = _llada_checkpoint_with_tokenizer(tmp_path / "LLaDA-tiny")
    rows = [{"prompt": " ".join(f"w{(7 * i + j) % 250 + 5}" for j in range(6)),
             "completion": " ".join(f"w{(3 * i + j) % 250 + 5}" for j in range(4))} for i in range(32)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_MDLM_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}

    def run(*command):
        result = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    out = tmp_path / "out"
    printed = run("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "examples" / "finetune.py"),
                  "--use_cpu", "true", "--model_name_or_path", str(source), "--dataset", str(tmp_path / "chat.jsonl"),
                  "--output_dir", str(out), "--lora_r", "4", "--lora_target_modules", "q_proj,v_proj",
                  "--canvas_length", "8", "--max_steps", "4", "--per_device_train_batch_size", "2",
                  "--learning_rate", "0.01", "--logging_steps", "1", "--report_to", "none", "--eval_fraction", "0.1",
                  "--num_samples", "1", "--disable_tqdm", "true")
    assert "--- sample:" in printed  # drawn after training, where it trained
    assert len([p for p in (tmp_path / "cache" / "converted").iterdir() if p.suffix != ".lock"]) == 1  # converted once
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model.safetensors").exists()

    push = str(ROOT / "examples" / "push_to_hub.py")
    run(push, "--model_dir", str(out), "--repo_id", "me/llada-tiny-ft", "--dry_run", "--out_dir", str(tmp_path / "up"))
    run(push, "--model_dir", str(out), "--repo_id", "me/llada-tiny-lora", "--adapter", "--push_base",
        "me/llada-tiny-hf-mdlm", "--dry_run", "--out_dir", str(tmp_path / "up-lora"))
    hf_home = tmp_path / "hf_home"
    for folder, repo in (("up", "me/llada-tiny-ft"), ("up-lora", "me/llada-tiny-lora"),
                         ("up-lora-base", "me/llada-tiny-hf-mdlm")):
        cache = install_in_hf_cache(tmp_path / folder, repo, hf_home)
        if folder == "up-lora":  # an adapter repo has no config.json: a download records that 404 as this marker
            marker = cache / ".no_exist" / COMMIT / "config.json"
            marker.parent.mkdir(parents=True)
            marker.touch()
    snippets = {name: first_python_block(tmp_path / folder / "README.md") for name, folder in
                (("model", "up"), ("adapter", "up-lora"))}
    (tmp_path / "snippets.json").write_text(json.dumps(snippets))
    (tmp_path / "probe.json").write_text(json.dumps([5, 17, 299, 299, 40, 299]))
    (tmp_path / "check.py").write_text(REHEARSAL_SNIPPETS)
    logits = last_json_line(run_without_hf_mdlm(
        f"import runpy, sys\nsys.argv = ['check', {str(tmp_path / 'snippets.json')!r}, "
        f"{str(tmp_path / 'probe.json')!r}]\nrunpy.run_path({str(tmp_path / 'check.py')!r}, run_name='__main__')",
        cwd=tmp_path, env={"HF_HOME": str(hf_home)}))
    import torch

    assert torch.allclose(torch.tensor(logits["adapter"]), torch.tensor(logits["model"]), atol=1e-4)

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    gsm8k = ROOT / "tests" / "fixtures" / "gsm8k-mini"
    (tasks / "gsm8k_mini.yaml").write_text((gsm8k / "gsm8k_mini.yaml").read_text().replace(
        "tests/fixtures/gsm8k-mini/test.jsonl", str(gsm8k / "test.jsonl")))
    run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hf_mdlm.evaluation.lm_eval",
        "--model", "hf_mdlm", "--model_args", f"pretrained={out}", "--device", "cpu", "--tasks", "gsm8k_mini",
        "--include_path", str(tasks), "--output_path", str(tmp_path / "eval"), "--log_samples")
    [samples] = (tmp_path / "eval").rglob("samples_gsm8k_mini_*.jsonl")
    assert sorted(json.loads(line)["doc_id"] for line in samples.read_text().splitlines()) == list(range(6))


def test_push_to_hub_overwrite_replaces_an_earlier_export_only(model_folder, tmp_path):
    """`--overwrite` used to remove OUT_DIR with no look inside: now it empties an earlier export, and refuses a
    folder holding anything an export does not write, deleting nothing."""
    script = example("push_to_hub")
    out = tmp_path / "upload"
    argv = ["--model_dir", str(model_folder), "--repo_id", "org/x", "--dry_run", "--out_dir", str(out)]
    script.main(argv)
    with pytest.raises(SystemExit, match="--out_dir .* not empty.*pass --overwrite"):
        script.main(argv)
    script.main(argv + ["--overwrite"])  # an earlier export: replaced
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds files no run writes \\(my_notes.txt\\)"):
        script.main(argv + ["--overwrite"])
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "config.json").exists()


def test_evaluate_writes_only_into_a_new_empty_or_earlier_evaluation_folder(tmp_path, monkeypatch):
    script = example("evaluate")

    class Loaded(Exception):  # the checks passed and the work began
        pass

    def loaded(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(script, "load_for_inference", loaded)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")  # an earlier evaluation
    argv = ["--model", "m", "--output_dir", str(out)]
    with pytest.raises(SystemExit, match="is not empty .*pass --overwrite_output_dir"):
        script.main(argv)
    with pytest.raises(Loaded):
        script.main(argv + ["--overwrite_output_dir"])
    assert not (out / "results.json").exists()  # replaced, before the work
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(SystemExit, match="does not write \\(thesis.tex\\); nothing was deleted"):
        script.main(argv + ["--overwrite_output_dir", "true"])
    assert (out / "thesis.tex").read_text() == "mine"
