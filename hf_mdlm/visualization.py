"""Watch a diffusion sampler fill its canvas: one frame per denoising step, shown live in a terminal or saved as
a GIF, a self-contained HTML page or a PNG of one step.

    recorder = DenoisingRecorder(tokenizer, prompt_length, mask_token_id, slack_token_id, on_frame=TerminalRenderer())
    model.generate(input_ids, step_callback=recorder)
    write_animation(recorder.frames, "denoising.gif")

A frame holds the generated region of one canvas row (the prompt is kept as text): per position the token id,
whether it is still masked and whether this very step committed it. `examples/generate.py --visualize` and
`--animate PATH` use this module on the first prompt.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .generation_mdlm import strip_generation

ANIMATION_SUFFIXES = (".gif", ".html", ".png")  # .png: one still, the middle frame
MASK_GLYPH, SLACK_GLYPH, END_GLYPH = "░", "·", "¶"
# Kinds of cells: the prompt, a masked position, a token committed in this step, an older token, an old <slack>,
# an old EOS (what follows the first EOS is cut from the printed text; a glyph keeps the canvas compact).
KINDS = ("prompt", "mask", "new", "old", "slack", "end")


@dataclass
class Frame:
    """The canvas after one denoising step (generated region only; `prompt` is the decoded prompt)."""

    step: int
    prompt: str
    ids: list[int]
    masked: list[bool]
    new: list[bool]  # committed in this step
    pieces: list[str]  # each position's decoded text ("" where masked)
    is_slack: list[bool]
    is_end: list[bool]  # EOS

    def cells(self) -> list[tuple[str, str]]:
        """(text, kind) per position, prompt first: what every renderer draws."""
        out = [(self.prompt, "prompt")] if self.prompt else []
        for piece, masked, new, slack, end in zip(self.pieces, self.masked, self.new, self.is_slack, self.is_end):
            if masked:
                out.append((MASK_GLYPH, "mask"))
            else:  # a new <slack> or EOS is highlighted like any new token, an old one stays dim
                text = SLACK_GLYPH if slack else END_GLYPH if end else piece
                out.append((text, "new" if new else "slack" if slack else "end" if end else "old"))
        return out

    def summary(self) -> str:
        return f"step {self.step}: {sum(self.new)} new, {sum(self.masked)} masked"


class DenoisingRecorder:
    """A `step_callback` for `model.generate` that keeps one `Frame` per denoising step of canvas row `row`.

    `prompt_length` is the width of the (left-padded) prompt part of the canvas: `input_ids.shape[1]`.
    `on_frame(frame)`, if given, runs after each step (e.g. a `TerminalRenderer`).
    """

    def __init__(self, tokenizer, prompt_length: int, mask_token_id: int, slack_token_id: Optional[int] = None, *,
                 eos_token_id=None, row: int = 0, on_frame: Optional[Callable[[Frame], None]] = None):
        self.tokenizer, self.prompt_length, self.row = tokenizer, prompt_length, row
        self.mask_token_id, self.slack_token_id = mask_token_id, slack_token_id
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        eos = self.eos_token_id
        self._eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        self.on_frame = on_frame
        self.frames: list[Frame] = []
        self._pieces: dict[int, str] = {}  # token id -> text, decoded once

    def __call__(self, step: int, canvas) -> None:
        row = [int(t) for t in canvas[self.row].tolist()]
        ids = row[self.prompt_length:]
        masked = [t == self.mask_token_id for t in ids]
        # Before the first step the whole generated region is masked.
        before = self.frames[-1].masked if self.frames else [True] * len(ids)
        frame = Frame(step=step, prompt=self.frames[0].prompt if self.frames else self._prompt(row), ids=ids,
                      masked=masked, new=[b and not m for b, m in zip(before, masked)],
                      pieces=["" if m else self._piece(t) for t, m in zip(ids, masked)],
                      is_slack=[t == self.slack_token_id for t in ids], is_end=[t in self._eos for t in ids])
        self.frames.append(frame)
        if self.on_frame is not None:
            self.on_frame(frame)

    def _prompt(self, row: list[int]) -> str:
        return self.tokenizer.decode(row[:self.prompt_length], skip_special_tokens=True)

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return self._pieces[token]

    def text(self, frame: Optional[Frame] = None) -> str:
        """A frame's text as `examples/generate.py` prints it: `<slack>` and masks removed, cut at EOS."""
        frame = frame or self.frames[-1]
        [tokens] = strip_generation([frame.ids], mask_token_id=self.mask_token_id,
                                    slack_token_id=self.slack_token_id, eos_token_id=self.eos_token_id)
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------------------
# Layout: cells -> lines of (character, kind), wrapped at `width` columns; shared by the terminal and the pictures.


def layout(cells, width: int) -> list[list[tuple[str, str]]]:
    """Lines of at most `width` (character, kind) pairs; newlines in tokens break lines, tabs become spaces."""
    lines, line = [], []
    for text, kind in cells:
        parts = text.replace("\t", " ").replace("\r", "").split("\n")
        for i, part in enumerate(parts):
            if i:  # a newline inside a token ends the line
                lines.append(line)
                line = []
            # Wrap before a token that does not fit, unless it would not fit on any line.
            if line and len(line) + len(part) > width and len(part) <= width:
                lines.append(line)
                line = []
            for char in part:
                if len(line) == width:
                    lines.append(line)
                    line = []
                line.append((char, kind))
    lines.append(line)
    return lines


def render_text(frame: Frame, width: int = 80, styled: bool = False) -> str:
    """The frame as text lines; `styled` adds ANSI colours (masks and slack dim, new tokens reversed)."""
    styles = {"prompt": "\x1b[36m", "mask": "\x1b[2m", "new": "\x1b[1;7m", "old": "", "slack": "\x1b[2m",
              "end": "\x1b[2m"}
    out = []
    for line in layout(frame.cells(), width):
        text, current = "", ""
        for char, kind in line:
            if styled and styles[kind] != current:  # one escape per run of the same kind
                text += "\x1b[0m" + styles[kind]
                current = styles[kind]
            text += char
        out.append(text + ("\x1b[0m" if current else ""))
    return "\n".join(out)


class TerminalRenderer:
    """`on_frame` callback for `--visualize`: on a terminal it redraws the canvas in place after every step; on a
    pipe or file it prints each frame as a plain block (a header line, then the canvas)."""

    def __init__(self, stream=None, width: Optional[int] = None, height: Optional[int] = None):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        size = shutil.get_terminal_size()
        self.width = width or max(20, size.columns - 1)
        self.height = height or max(3, size.lines - 1)
        self._drawn = 0  # lines printed for the previous frame, to move back over them

    def __call__(self, frame: Frame) -> None:
        block = f"--- {frame.summary()} ---\n" + render_text(frame, self.width, styled=self.tty)
        if self.tty:
            # The cursor cannot move above the screen: a canvas taller than it shows its last lines only.
            block = "\n".join(block.split("\n")[-self.height:])
            if self._drawn:  # cursor up to the previous frame's first line, clear to the end, draw over it
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
        self.stream.write(block + "\n")
        self.stream.flush()
        self._drawn = block.count("\n") + 1


# ----------------------------------------------------------------------------------------------------------------
# Files: GIF and PNG (Pillow, imported only here), HTML (standard library).


def check_animation_path(path) -> Path:
    """`path` as a Path, or a ValueError (unknown suffix, missing or unwritable folder, a folder at the path) /
    ImportError (no Pillow) up front, before minutes of sampling."""
    path = Path(path)
    if path.suffix.lower() not in ANIMATION_SUFFIXES:
        raise ValueError(f"cannot write an animation to {str(path)!r}: the suffix must be one of "
                         f"{', '.join(ANIMATION_SUFFIXES)}")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise ValueError(f"cannot write {str(path)!r}: {str(path.parent)!r} {what}")
    if path.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: it is a folder")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {str(path)!r}: no permission to write there")
    if path.suffix.lower() != ".html":
        _pillow()
    return path


def write_animation(frames: list[Frame], path, *, width: int = 72, duration_ms: int = 250) -> Path:
    """Save the frames as `.gif` (one image per step), `.html` (one self-contained page with a slider) or `.png`
    (the middle frame only). Any other suffix is a ValueError."""
    path = check_animation_path(path)
    if not frames:
        raise ValueError(f"no frames to write to {str(path)!r}: was the recorder passed as step_callback?")
    suffix = path.suffix.lower()
    if suffix == ".png":
        return write_frame_png(frames[len(frames) // 2], path, width=width)
    if suffix == ".html":
        path.write_text(_html_page(frames, duration_ms), encoding="utf-8")
        return path
    lines = [layout(frame.cells(), width) for frame in frames]
    rows = max(len(x) for x in lines)  # every image the same size: the tallest frame
    images = [_draw(frame, x, width, rows) for frame, x in zip(frames, lines)]
    # Hold the last frame longer so the finished text can be read before the loop restarts.
    durations = [duration_ms] * (len(images) - 1) + [max(duration_ms, 2000)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def write_frame_png(frame: Frame, path, *, width: int = 72) -> Path:
    """Save one frame as a PNG picture."""
    path = Path(path)
    lines = layout(frame.cells(), width)
    _draw(frame, lines, width, len(lines)).save(path, format="PNG")
    return path


def _pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError("GIF and PNG pictures need Pillow: pip install 'hf_mdlm[eval]' (or pip install pillow); "
                          "an .html animation needs nothing") from None
    return Image, ImageDraw, ImageFont


# Picture colours: background, header, and per kind (glyph colour, cell background or None).
_BACKGROUND, _HEADER = (252, 252, 250), (120, 120, 120)
_COLOURS = {"prompt": ((30, 80, 160), None), "mask": (None, (222, 222, 222)), "new": ((0, 0, 0), (255, 205, 60)),
            "old": ((30, 30, 30), None), "slack": ((170, 170, 170), None), "end": ((170, 170, 170), None)}
_LEGEND = "grey: masked    yellow: committed at this step    blue: the prompt    \u00b7 <slack>    small box: EOS"


def _draw(frame: Frame, lines, width: int, rows: int):
    """One frame on a fixed character grid (PIL's default font, each glyph centred in its cell)."""
    Image, ImageDraw, ImageFont = _pillow()
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    cell_w, cell_h, pad = 10, 21, 12
    # A header, a blank row, the canvas rows, a blank row and the legend.
    image = Image.new("RGB", (2 * pad + width * cell_w, 2 * pad + (rows + 4) * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), frame.summary(), fill=_HEADER, font=font)
    for y, line in enumerate(lines, start=2):
        for x, (char, kind) in enumerate(line):
            ink, cell = _COLOURS[kind]
            left, top = pad + x * cell_w, pad + y * cell_h
            if kind == "mask":  # a gap around each masked cell, so that they can be counted
                draw.rectangle((left + 1, top + 3, left + cell_w - 2, top + cell_h - 4), fill=cell)
                continue
            if cell is not None:
                draw.rectangle((left, top + 1, left + cell_w - 1, top + cell_h - 2), fill=cell)
            if char == END_GLYPH:  # the default font has no pilcrow: a small outlined square instead
                draw.rectangle((left + 2, top + 6, left + cell_w - 3, top + cell_h - 7), outline=ink)
            elif not char.isspace():
                draw.text((left + cell_w / 2, top + cell_h / 2), char, fill=ink, font=font, anchor="mm")
    draw.text((pad, pad + (rows + 3) * cell_h), _LEGEND, fill=_HEADER, font=small)
    return image


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hf_mdlm: denoising</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 52em; }}
#canvas {{ font-family: monospace; font-size: 15px; white-space: pre-wrap; line-height: 1.5; }}
.prompt {{ color: #1e50a0; }} .mask {{ color: #bbb; }} .slack, .end {{ color: #aaa; }}
.new {{ background: #ffcd3c; }}
</style></head><body>
<p><button id="play">pause</button> <input id="slider" type="range" min="0" value="0" style="width: 30em">
<span id="label"></span></p>
<div id="canvas"></div>
<script id="frames" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("frames").textContent);
const slider = document.getElementById("slider"), play = document.getElementById("play");
slider.max = data.frames.length - 1;
function show(i) {{
  const frame = data.frames[i], canvas = document.getElementById("canvas");
  canvas.replaceChildren(...frame.cells.map(([text, kind]) => {{
    const span = document.createElement("span"); span.className = kind; span.textContent = text; return span; }}));
  document.getElementById("label").textContent = frame.summary;
  slider.value = i;
}}
let timer = null;
function toggle() {{
  if (timer) {{ clearInterval(timer); timer = null; play.textContent = "play"; return; }}
  play.textContent = "pause";
  timer = setInterval(() => show((Number(slider.value) + 1) % data.frames.length), {duration});
}}
slider.oninput = () => {{ if (timer) toggle(); show(Number(slider.value)); }};
play.onclick = toggle;
show(0); toggle();
</script>
<p>{legend}</p>
</body></html>
"""


def _html_page(frames: list[Frame], duration_ms: int) -> str:
    data = {"frames": [{"step": f.step, "summary": f.summary(), "ids": f.ids, "masked": f.masked, "new": f.new,
                        "cells": f.cells()} for f in frames]}
    # "<" escaped inside the JSON, so no token text can close the <script> element.
    text = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    legend = html.escape(f"{MASK_GLYPH} masked, highlighted: committed in this step, {SLACK_GLYPH} <slack>, "
                         f"{END_GLYPH} end of text (EOS)")
    return _PAGE.format(data=text, duration=int(duration_ms), legend=legend)
