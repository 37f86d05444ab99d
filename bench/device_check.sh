#!/usr/bin/env bash
# The accelerator check: one script, about 10 minutes on one H200, every section bounded by its own timeout.
#   bash bench/device_check.sh        (prints Markdown tables for docs/benchmarks.md)
#   SECTIONS="0 1 3" bash bench/device_check.sh   (only those sections)
# 0. the Triton lattice kernels against the CPU loops (pytest); 1. the losses in bf16 at LLaDA's vocabulary
# (126464); 2. generate with KV caches at batch 1/8/32 in bf16, with sdpa and (when flash-attn is installed)
# flash_attention_2; 3. a 50-step bf16 fine-tune of a ~300M MDLM with CE + slack-CTC; 4. LLaDA-8B's shape with
# random weights, LoRA + gradient checkpointing, canvas 1024, 10 steps at micro-batches 1, 4 and 8 (MFU, memory
# against the estimate); 5. a profile of batch-1 sampling;
# 6. the sampler engine at LLaDA-8B's shape: ms per call, eager and compiled, against the weight-bandwidth limit;
# 7. GRPO steps of a ~300M MDLM in bf16: rollout and step time per estimator, exact and fast rollouts.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "CUDA is not available: bench/device_check.sh measures a GPU" >&2; exit 1; }
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"

want() { [[ " ${SECTIONS:-0 1 2 3 5 6 7} " == *" $1 "* ]]; }

if want 0; then
echo; echo "## 0. slack-CTC lattice kernels on CUDA vs the CPU loops (tests/test_training_lattice_kernels.py)"
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_training_lattice_kernels.py -k cuda || echo "(section 0 failed)"
fi

if want 1; then
echo; echo "## 1. Losses, bf16, V = 126464 (bench/bench_losses.py)"
timeout 150 python bench/bench_losses.py --device cuda --dtype bfloat16 --repeats 3 \
    --case 1024 126464 16 --case 1024 126464 64 --case 4096 126464 64 || echo "(section 1 failed or timed out)"
fi

if want 2; then
echo; echo "## 2. Sampling with KV caches, bf16 (bench/bench_generate.py --caches)"
for attn in sdpa flash_attention_2; do
    if [ "$attn" = flash_attention_2 ] && ! python -c "import flash_attn" 2>/dev/null; then
        echo "flash-attn is not installed: flash_attention_2 skipped"; continue
    fi
    echo "### $attn"
    timeout 150 python bench/bench_generate.py --caches --device cuda --dtype bfloat16 --attn "$attn" \
        --batch_sizes 1 8 32 --cache_lengths 256 512 --hidden 1024 --layers 8 --heads 16 --vocab 32000 \
        || echo "(section 2, $attn, failed or timed out)"
done
fi

if want 3; then
echo; echo "## 3-4. Fine-tuning, bf16, CE + slack-CTC (bench/device_check.py)"
timeout 120 python bench/device_check.py finetune --header || echo "(section 3 failed or timed out)"
for batch in 1 4 8; do  # MFU against the micro-batch (issue 21's goal: >= 35%)
    timeout 150 python bench/device_check.py llada8b --batch $batch || echo "(section 4, batch $batch, failed or timed out)"
done
fi

if want 5; then
echo; echo "## 5. Where a batch-1 sampling step spends its time (bench/profile_generate.py)"
timeout 150 python bench/profile_generate.py --device cuda --length 128 --top 10 || echo "(section 5 failed or timed out)"
fi

if want 6; then
echo; echo "## 6. The sampler engine, LLaDA-8B shape, bf16, dual cache, canvas 256, blocks of 32 (bench/bench_generate.py --engine)"
timeout 300 python bench/bench_generate.py --engine --device cuda --llada8b_shape --cache_lengths 256 \
    --batch_sizes 1 8 32 --bandwidth_gbs 4800 --no_reference || echo "(section 6 failed or timed out)"
fi

if want 7; then
echo; echo "## 7. GRPO steps, ~300M MDLM, bf16, 32 rollouts of 128 tokens per step (bench/bench_grpo.py)"
timeout 240 python bench/bench_grpo.py --repeats 1 || echo "(section 7 failed or timed out)"
fi
