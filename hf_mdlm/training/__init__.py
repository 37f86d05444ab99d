"""The training side: the objective's arguments, the forward process, the losses and the `Trainer`.

    arguments.py  MDLMTrainingArguments: TrainingArguments plus the objective's options
    block_diffusion.py  the [x_t; x_0] input and mask of block-diffusion training (BD3LM)
    canvas.py     clean canvases (slack insertion, fill) and the noise (schedules, times, masks)
    losses.py     masked cross-entropy and slack-CTC, per example
    trainer.py    MDLMTrainer: a transformers.Trainer whose compute_loss puts them together
    policy_log_probs.py  per-token log-probabilities of a completion for RL (one-step and coupled estimates)
    grpo.py       MDLMGRPOConfig/MDLMGRPOTrainer: GRPO on TRL's GRPOTrainer (needs the `rl` extra)

Import the modules themselves (`from hf_mdlm.training.trainer import MDLMTrainer`): importing
`transformers.Trainer` costs seconds, so this package imports nothing eagerly.
"""
