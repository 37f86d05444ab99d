"""The shipped accelerate configs parse with accelerate's own loader and ask for what their names say."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

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
from accelerate.commands.config.config_args import load_config_from_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from hf_mdlm import MDLMConfig, MDLMForMaskedLM, modeling_mdlm
from hf_mdlm.training.losses import masked_cross_entropy

yaml_path, out_dir = sys.argv[1], sys.argv[2]
fsdp = load_config_from_file(yaml_path).fsdp_config
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
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
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:
    gap = max((full[k] - v).abs().max().item() for k, v in reference.state_dict().items() if k in full)
    moved = max((full[k] - v).abs().max().item() for k, v in initial.items() if k in full)
    saved = MDLMForMaskedLM(config)
    saved.load_state_dict(full, strict=False)  # lm_head and norms included; the rotary buffers are not parameters
    saved.save_pretrained(out_dir)
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

    model = MDLMForMaskedLM.from_pretrained(out)
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
