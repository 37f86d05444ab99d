#!/usr/bin/env python
"""Generate text with a masked diffusion language model (an hf_mdlm folder or Hub id).

Examples::

    python examples/generate.py --model path/to/model --prompt "Write a haiku about rain." \\
        --max_new_tokens 64 --steps 64 --block_length 32
    python examples/generate.py --model path/to/model --prompt_file prompts.txt --temperature 0.7 --seed 0 \\
        --threshold 0.9 --stop_at_eos

Every setting of `MDLMGenerationConfig` is a flag (`--steps`, `--block_length`, `--remasking`, `--threshold`,
`--shift_rate`, `--suppress_slack`, ...); a flag that is not given keeps the model's `generation_config.json`
value, and `none` switches an optional one off (`--kv_cache none`, `--threshold none`). Prompts are left-padded and batched; the chat template is applied when the tokenizer has one
(`--no_chat_template` to disable). The printed text has `<slack>` removed and is cut at the first EOS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import TextStreamer

from hf_mdlm.cli import (add_bool_flag, add_generation_flags, check_generation_settings, device_flag,
                         generation_settings, positive_int)
from hf_mdlm.generation_mdlm import mix_seed, strip_generation
from hf_mdlm.loading import load_for_inference
from hf_mdlm.visualization import DenoisingRecorder, TerminalRenderer, check_animation_path, write_animation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: --model)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompt_file", default=None, help="a text file with one prompt per line")
    add_bool_flag(parser, "--no_chat_template", help="do not apply the tokenizer's chat template")
    parser.add_argument("--system", default=None, help="system message for the chat template")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sampler; prompt i draws from (seed, i), whatever the batch size")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="prompts per generate() call")
    add_bool_flag(parser, "--trust_remote_code",
                        help="run the Python files of a model folder that is not an hf_mdlm one")
    parser.add_argument("--device", type=device_flag, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    add_bool_flag(parser, "--stream", help="print the blocks as they are final (one prompt only)")
    add_bool_flag(parser, "--show_raw", help="also print the raw canvas, slack included")
    add_bool_flag(parser, "--progress", help="show a progress bar over the steps")
    add_bool_flag(parser, "--visualize", help="redraw the first prompt's canvas at every step")
    parser.add_argument("--animate", metavar="PATH", help="save the first prompt's steps: .gif, .html, .png (mid step)")

    add_generation_flags(parser, helps={
        "return_dict_in_generate": "accepted for completeness; this script always asks for the dict output",
        "output_history": "print the raw canvas of the first sequence after every step"})
    return parser


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        lines = Path(args.prompt_file).read_text(encoding="utf-8").splitlines()
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise SystemExit("give at least one --prompt or a --prompt_file")
    return prompts


def format_prompt(tokenizer, prompt: str, args) -> str:
    if args.no_chat_template or not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def main(argv=None) -> list[str]:
    args = build_parser().parse_args(argv)
    prompts = read_prompts(args)
    watch = args.visualize or args.animate is not None
    if watch and args.stream:
        raise SystemExit("--stream cannot be combined with --visualize or --animate: they draw the canvas themselves")
    if args.animate is not None:  # a bad path fails now, not after loading the model and sampling
        try:
            check_animation_path(args.animate)
        except (ValueError, ImportError) as error:
            raise SystemExit(f"--animate: {error}") from None

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model, tokenizer = load_for_inference(args.model, args.device, tokenizer=args.tokenizer, dtype=dtype,
                                          trust_remote_code=args.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    settings = generation_settings(args)  # the flags given; `--kv_cache none` etc. switch a saved setting off
    settings["return_dict_in_generate"] = True
    check_generation_settings(model, settings)
    config = model.generation_config
    ids_of = {name: settings.get(name, getattr(config, name, None)) for name in ("mask_token_id", "slack_token_id",
                                                                                  "eos_token_id")}
    if ids_of["eos_token_id"] is None:
        ids_of["eos_token_id"] = tokenizer.eos_token_id
    copies = settings.get("num_return_sequences", getattr(config, "num_return_sequences", 1) or 1)
    if args.stream and (len(prompts) > 1 or copies > 1):
        raise SystemExit("--stream needs a single prompt and num_return_sequences 1")

    texts = []
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start:start + args.batch_size]
        formatted = [format_prompt(tokenizer, p, args) for p in chunk]
        use_template = formatted != chunk
        enc = tokenizer(formatted, return_tensors="pt", padding=True,
                        add_special_tokens=not use_template).to(args.device)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if args.stream else None
        # one seed per prompt from its index in the whole list: the same samples for any --batch_size
        seeds = None if args.seed is None else [mix_seed(args.seed, start + i) for i in range(len(chunk))]
        prompt_length = enc.input_ids.shape[1]
        show = TerminalRenderer() if args.visualize else None  # both watch row 0 of the first batch only
        recorder = DenoisingRecorder(tokenizer, prompt_length, **ids_of, on_frame=show) if watch and not start else None
        out = model.generate(enc.input_ids, attention_mask=enc.attention_mask, generator=seeds, streamer=streamer,
                             step_callback=recorder, progress=args.progress, **settings)
        if recorder is not None and args.animate:
            print(f"[animation: {write_animation(recorder.frames, args.animate)}]", file=sys.stderr)
        clean = strip_generation(out.sequences, prompt_length=prompt_length, **ids_of)
        for row, tokens in enumerate(clean):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            texts.append(text)
            index = start + row // copies
            suffix = f" (sample {row % copies + 1}/{copies})" if copies > 1 else ""
            print(f"=== prompt {index + 1}{suffix} ===\n{chunk[row // copies]}\n--- output ---\n{text}")
            if args.show_raw:
                raw = tokenizer.decode(out.sequences[row, prompt_length:], skip_special_tokens=False)
                print(f"--- raw canvas ---\n{raw}")
        if out.history:
            for step, canvas in enumerate(out.history):
                raw = tokenizer.decode(canvas[0, prompt_length:], skip_special_tokens=False)
                print(f"--- step {step} (first sequence) ---\n{raw}")
        print(f"[{out.num_model_calls} model calls]", file=sys.stderr)
    return texts


if __name__ == "__main__":
    main()
