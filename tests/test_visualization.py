"""Tests of `hf_mdlm/visualization.py` (watching the sampler fill its canvas) and of `examples/generate.py
--visualize / --animate`, on a tiny random model with the bundled tokenizer (canvas 16, 8 steps)."""

import importlib.util
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from hf_mdlm import MDLMForMaskedLM, strip_generation
from hf_mdlm.data.loading import bundled_corpus_files
from hf_mdlm.visualization import (
    END_GLYPH,
    MASK_GLYPH,
    SLACK_GLYPH,
    DenoisingRecorder,
    TerminalRenderer,
    check_animation_path,
    layout,
    render_text,
    write_animation,
    write_frame_png,
)
from conftest import tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
CANVAS, STEPS = 16, 8


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_corpus_files()["tokenizer"])


def _ids(tok):
    return dict(mask_token_id=tok.mask_token_id, slack_token_id=tok.convert_tokens_to_ids("<slack>"),
                eos_token_id=tok.eos_token_id)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **_ids(tokenizer))
    return MDLMForMaskedLM(config).eval()


@pytest.fixture(scope="module")
def model_folder(model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-mdlm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def generate_script():
    spec = importlib.util.spec_from_file_location("hf_mdlm_examples_generate_vis", ROOT / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(model, tokenizer, prompts=("ROMEO. But soft",), row=0, **kwargs):
    """Generate with a recorder; also keep the raw canvases the callback received."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    recorder = DenoisingRecorder(tokenizer, enc.input_ids.shape[1], **_ids(tokenizer), row=row)
    canvases = []

    def callback(step, canvas):
        canvases.append(canvas)
        recorder(step, canvas)

    out = model.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=CANVAS, steps=STEPS,
                         temperature=1.0, generator=0, return_dict_in_generate=True, step_callback=callback, **kwargs)
    return recorder, canvases, out, enc.input_ids.shape[1]


@pytest.mark.parametrize("row", [0, 1])
def test_one_frame_per_step_and_exactly_the_committed_positions_are_new(model, tokenizer, row):
    recorder, canvases, out, P = _record(model, tokenizer, ("ROMEO. But soft", "JULIET."), row=row)
    frames = recorder.frames
    assert len(frames) == len(canvases) == STEPS == out.num_model_calls
    assert [f.step for f in frames] == list(range(STEPS))
    before = torch.full((CANVAS,), tokenizer.mask_token_id)  # the canvas starts all masked
    for frame, canvas in zip(frames, canvases):
        now = canvas[row, P:]
        assert frame.ids == now.tolist()
        assert frame.masked == (now == tokenizer.mask_token_id).tolist()
        committed = (before == tokenizer.mask_token_id) & (now != tokenizer.mask_token_id)
        assert frame.new == committed.tolist() and sum(frame.new) == CANVAS // STEPS
        before = now
    first = frames[0]
    assert all(m or n for m, n in zip(first.masked, first.new))  # step 0: nothing older than this step
    assert not any(frames[-1].masked) and frames[-1].ids == out.sequences[row, P:].tolist()
    [clean] = strip_generation(out.sequences[row:row + 1], prompt_length=P, **_ids(tokenizer))
    assert recorder.text() == tokenizer.decode(clean, skip_special_tokens=True)
    assert frames[0].prompt == ("ROMEO. But soft", "JULIET.")[row]


def test_cells_and_layout(model, tokenizer):
    recorder, *_ = _record(model, tokenizer)
    frame = recorder.frames[3]
    cells = frame.cells()
    assert cells[0] == ("ROMEO. But soft", "prompt") and len(cells) == CANVAS + 1
    kinds = [kind for _, kind in cells[1:]]
    assert kinds.count("mask") == sum(frame.masked) and kinds.count("new") == sum(frame.new)
    assert all(text == MASK_GLYPH for text, kind in cells if kind == "mask")
    lines = layout(cells, 20)
    assert all(len(line) <= 20 for line in lines)
    assert "".join(c for line in lines for c, _ in line) == "".join(t for t, _ in cells).replace("\n", "")
    assert layout([("abc\ndef", "old")], 80) == [[(c, "old") for c in "abc"], [(c, "old") for c in "def"]]


def test_slack_eos_and_padding_by_hand(tokenizer):
    """Canvases fed to the recorder by hand: a left-padded prompt, then <slack> and EOS committed."""
    ids = _ids(tokenizer)
    M, S, E, pad = ids["mask_token_id"], ids["slack_token_id"], ids["eos_token_id"], tokenizer.pad_token_id
    word = tokenizer.convert_tokens_to_ids("ĠBut")
    prompt = [pad, tokenizer.bos_token_id] + tokenizer("ROMEO.", add_special_tokens=False).input_ids
    recorder = DenoisingRecorder(tokenizer, len(prompt), **ids)
    for step, gen in enumerate([[M, S, M, M], [word, S, M, E], [word, S, E, E]]):
        recorder(step, torch.tensor([prompt + gen]))
    first, second, last = (frame.cells() for frame in recorder.frames)
    assert first == [("ROMEO.", "prompt"), (MASK_GLYPH, "mask"), (SLACK_GLYPH, "new"), (MASK_GLYPH, "mask"),
                     (MASK_GLYPH, "mask")]
    assert second[1:] == [(" But", "new"), (SLACK_GLYPH, "slack"), (MASK_GLYPH, "mask"), (END_GLYPH, "new")]
    assert last[1:] == [(" But", "old"), (SLACK_GLYPH, "slack"), (END_GLYPH, "new"), (END_GLYPH, "end")]
    assert recorder.text() == " But" and recorder.text(recorder.frames[0]) == ""
    assert render_text(recorder.frames[1]) == f"ROMEO. But{SLACK_GLYPH}{MASK_GLYPH}{END_GLYPH}"


def test_generate_script_visualizes_and_animates_the_sample_it_prints(model_folder, generate_script, tmp_path,
                                                                     capsys):
    page = tmp_path / "tmp.html"
    texts = generate_script.main([
        "--model", str(model_folder), "--prompt", "ROMEO. But soft, what light", "--prompt", "JULIET.",
        "--max_new_tokens", str(CANVAS), "--steps", str(STEPS), "--temperature", "1.0", "--seed", "0",
        "--device", "cpu", "--animate", str(page), "--visualize"])
    printed = capsys.readouterr().out
    # Not a terminal: one plain block per step, for the first prompt only, then the usual output.
    assert len(re.findall(r"^--- step \d+: \d+ new, \d+ masked ---$", printed, flags=re.M)) == STEPS
    assert "\x1b[" not in printed
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # self-contained
    data = json.loads(re.search(r'<script id="frames" type="application/json">(.*?)</script>', html, re.S).group(1))
    frames = data["frames"]
    assert len(frames) == STEPS and [f["step"] for f in frames] == list(range(STEPS))
    assert all(m or n for m, n in zip(frames[0]["masked"], frames[0]["new"]))
    assert not any(frames[-1]["masked"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_folder)
    [clean] = strip_generation([frames[-1]["ids"]], **_ids(tok))
    last = tok.decode(clean, skip_special_tokens=True)
    first_output = printed.split("--- output ---\n", 1)[1].split("\n=== prompt 2 ===\n", 1)[0]
    assert first_output == last == texts[0]


def test_gif_has_one_image_per_step_and_png_holds_one_frame(model, tokenizer, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    recorder, canvases, *_ = _record(model, tokenizer)
    gif = write_animation(recorder.frames, tmp_path / "a.gif")
    with Image.open(gif) as image:
        assert image.n_frames == len(canvases) == STEPS
        size = image.size
    png = write_animation(recorder.frames, tmp_path / "a.png")  # .png: the middle frame
    with Image.open(png) as image:
        assert image.format == "PNG" and getattr(image, "n_frames", 1) == 1 and image.size[0] == size[0]
    with Image.open(write_frame_png(recorder.frames[-1], tmp_path / "last.png", width=40)) as image:
        assert image.format == "PNG" and image.size[0] < size[0]


def test_bad_paths_are_clear_errors(model, tokenizer, tmp_path, generate_script, capsys):
    recorder, *_ = _record(model, tokenizer)
    bad = tmp_path / "movie.mp4"
    with pytest.raises(ValueError, match=r"movie\.mp4.*\.gif, \.html, \.png"):
        write_animation(recorder.frames, bad)
    with pytest.raises(ValueError, match="does not exist"):
        write_animation(recorder.frames, tmp_path / "missing" / "a.html")
    with pytest.raises(ValueError, match="no frames"):
        write_animation([], tmp_path / "a.html")
    (tmp_path / "made.gif").mkdir()  # these failed only after the sampling, with a raw OSError
    (tmp_path / "file.gif").write_bytes(b"")
    with pytest.raises(ValueError, match="file.gif' is not a folder"):
        write_animation(recorder.frames, tmp_path / "file.gif" / "a.gif")
    with pytest.raises(ValueError, match="made.gif': it is a folder"):
        write_animation(recorder.frames, tmp_path / "made.gif")
    # generate.py refuses them before loading the model (this one does not exist).
    base = ["--model", str(tmp_path / "no-model"), "--prompt", "x"]
    with pytest.raises(SystemExit, match=r"--animate: .*movie\.mp4"):
        generate_script.main(base + ["--animate", str(bad)])
    with pytest.raises(SystemExit, match="--stream cannot be combined"):
        generate_script.main(base + ["--visualize", "--stream"])
    parser = generate_script.build_parser()
    assert parser.parse_args(base + ["--visualize"]).visualize is True
    assert parser.parse_args(base + ["--visualize", "true"]).visualize is True
    assert parser.parse_args(base + ["--visualize", "false"]).visualize is False


def test_gif_without_pillow_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now fails
    with pytest.raises(ImportError, match=r"pip install 'hf_mdlm\[eval\]'.*pip install pillow"):
        check_animation_path(tmp_path / "a.gif")
    assert check_animation_path(tmp_path / "a.html") == tmp_path / "a.html"  # HTML needs nothing


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_redraws_in_place_and_pipes_get_plain_blocks(model, tokenizer):
    recorder, *_ = _record(model, tokenizer)
    tty, pipe = FakeTerminal(), io.StringIO()
    for renderer in (TerminalRenderer(tty, width=30), TerminalRenderer(pipe, width=30)):
        for frame in recorder.frames:
            renderer(frame)
    shown = tty.getvalue()
    redraws = re.findall(r"\x1b\[(\d+)F\x1b\[J", shown)
    assert len(redraws) == STEPS - 1  # every frame after the first redraws over the one before
    assert "\x1b[1;7m" in shown and "\x1b[2m" + MASK_GLYPH in shown  # new tokens reversed, masks dim
    short = FakeTerminal()
    renderer = TerminalRenderer(short, width=10, height=4)  # a canvas taller than the screen: its last lines
    for frame in recorder.frames:
        renderer(frame)
    assert set(re.findall(r"\x1b\[(\d+)F", short.getvalue())) == {"4"}
    plain = pipe.getvalue()
    assert "\x1b" not in plain and plain.count("--- step ") == STEPS
    last = recorder.frames[-1]
    assert plain.endswith(f"--- {last.summary()} ---\n{render_text(last, 30)}\n")


def test_html_escapes_token_text(tmp_path, model, tokenizer):
    recorder, *_ = _record(model, tokenizer)
    recorder.frames[0].prompt = "</script><b>"
    html = write_animation(recorder.frames, tmp_path / "a.html").read_text(encoding="utf-8")
    assert html.count("</script>") == 2  # the JSON's and the player's own
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', html, re.S).group(1))
    assert data["frames"][0]["cells"][0] == ["</script><b>", "prompt"]
