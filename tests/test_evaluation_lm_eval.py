"""The lm-evaluation-harness adapter (`hf_mdlm/evaluation/lm_eval.py`): each request type against a direct
computation, and `lm_eval.simple_evaluate` on tiny tasks built here, with a model rigged so the answers are known."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_config

lm_eval = pytest.importorskip("lm_eval")  # the `eval` extra; .ci/run installs it

from hf_mdlm import MDLMForMaskedLM  # noqa: E402
from hf_mdlm.evaluation import conditional_log_likelihood  # noqa: E402
from hf_mdlm.evaluation.lm_eval import MDLMEvalLM  # noqa: E402


def bundled_config(tokenizer, **overrides):
    return tiny_config(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                       slack_token_id=tokenizer.convert_tokens_to_ids("<slack>"), eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, **overrides)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return MDLMForMaskedLM(bundled_config(tokenizer)).eval()


class Rigged(MDLMForMaskedLM):
    """A real MDLM whose logits favour `favoured` ids by a wide margin, so its answers are known in advance."""

    favoured: list = []

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits[..., self.favoured] += 50.0
        return out


def request(*args):
    return SimpleNamespace(args=args)


def test_one_token_continuation_is_the_exact_log_probability(model, tokenizer):
    # One masked token: every Monte-Carlo sample masks it alone, so the estimate is log p exactly.
    lm = MDLMEvalLM(model, tokenizer, mc_num=3, compute_is_greedy=True)
    context, continuation = "KING. Speak", " on"
    ctx, cont = lm._encode_pair(context, continuation)
    assert len(cont) == 1 and ctx[0] == tokenizer.bos_token_id
    with torch.no_grad():
        ids = torch.tensor([ctx + [tokenizer.mask_token_id]])
        expected = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)[cont[0]].item()
    [(log_p, greedy)] = lm.loglikelihood([request(context, continuation)], disable_tqdm=True)
    assert log_p == pytest.approx(expected, abs=1e-5)
    with torch.no_grad():
        argmax = model(input_ids=ids).logits[0, -1].argmax().item()
    assert greedy == (argmax == cont[0])


def test_loglikelihood_is_the_mc_estimate_with_one_seed_for_all_requests(model, tokenizer):
    lm = MDLMEvalLM(model, tokenizer, mc_num=6, batch_size=4, seed=3)
    pairs = [("To be, or not", " to be, that is"), ("HAMLET.", " Alas, poor Yorick")]
    got = lm.loglikelihood([request(*p) for p in pairs], disable_tqdm=True)
    for (context, continuation), (log_p, _) in zip(pairs, got):
        ctx, cont = lm._encode_pair(context, continuation)
        direct = conditional_log_likelihood(model, ctx, cont, num_samples=6, seed=3)["log_likelihood"]
        assert log_p == pytest.approx(direct, rel=1e-6)
    # an empty context is conditioned on BOS alone
    [(log_p, _)] = lm.loglikelihood([request("", "Alas")], disable_tqdm=True)
    cont = tokenizer("Alas", add_special_tokens=False).input_ids
    direct = conditional_log_likelihood(model, [tokenizer.bos_token_id], cont, num_samples=6, seed=3)
    assert log_p == pytest.approx(direct["log_likelihood"], rel=1e-6)


def test_is_greedy_is_true_exactly_for_the_greedy_canvas(model, tokenizer):
    lm = MDLMEvalLM(model, tokenizer, mc_num=2, compute_is_greedy=True)
    ctx = lm.tok_encode("Good morrow")
    prompt = torch.tensor([ctx])
    canvas = model.generate(prompt, max_new_tokens=3, steps=3, temperature=0.0)[0, len(ctx):].tolist()
    text = tokenizer.decode(canvas)
    greedy_request = (("Good morrow", text), ctx, canvas)
    other = (("Good morrow", "other"), ctx, canvas[:2] + [canvas[2] + 1 if canvas[2] > 10 else 50])
    [(_, g1), (_, g2)] = lm._loglikelihood_tokens([greedy_request, other], disable_tqdm=True)
    assert (g1, g2) == (True, False), text
    # Off by default (LLaDA's harness does not compute it): no generate call, is_greedy False.
    calls = []
    default = MDLMEvalLM(model, tokenizer, mc_num=2)
    original = model.generate
    model.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        [(_, g)] = default._loglikelihood_tokens([greedy_request], disable_tqdm=True)
    finally:
        del model.generate
    assert g is False and calls == []


def test_rolling_loglikelihood_sums_disjoint_windows(model, tokenizer):
    text = "O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    whole = MDLMEvalLM(model, tokenizer, mc_num=4)
    [total] = whole.loglikelihood_rolling([request(text)], disable_tqdm=True)
    direct = conditional_log_likelihood(model, [tokenizer.bos_token_id], ids, num_samples=4)["log_likelihood"]
    assert total == pytest.approx(direct, rel=1e-6)
    max_length = 8  # windows of 7 predicted tokens + 1 token of context
    windowed = MDLMEvalLM(model, tokenizer, mc_num=4, max_length=max_length)
    [total] = windowed.loglikelihood_rolling([request(text)], disable_tqdm=True)
    expected, start = 0.0, 0
    while start < len(ids):  # each window predicts the next tokens given as much of what precedes them as fits
        n = min(max_length - 1, len(ids) - start)
        context = [tokenizer.bos_token_id] if start == 0 else ids[start + n - max_length: start]
        assert len(context) + n <= max_length
        expected += conditional_log_likelihood(model, context, ids[start: start + n], num_samples=4)["log_likelihood"]
        start += n
    assert total == pytest.approx(expected, rel=1e-6)


def test_generate_until_matches_generate_and_does_not_depend_on_the_batch(model, tokenizer):
    lm = MDLMEvalLM(model, tokenizer, batch_size=4, block_length=4, tokens_per_step=2)
    kwargs = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0}
    contexts = ["Now is the winter", "HAMLET. To be", "A"]
    batched = lm.generate_until([request(c, kwargs) for c in contexts], disable_tqdm=True)
    alone = [lm.generate_until([request(c, kwargs)], disable_tqdm=True)[0] for c in contexts]
    assert batched == alone
    # the same call by hand: canvas 8 (6 rounded up to whole blocks of 4), 2 blocks x 2 steps, the request's seed
    from hf_mdlm.generation_mdlm import strip_generation
    from hf_mdlm.evaluation.lm_eval import _request_seed

    ctx = lm.tok_encode(contexts[1])
    canvas = model.generate(torch.tensor([ctx]), max_new_tokens=8, block_length=4, steps=4, temperature=1.0,
                            generator=[_request_seed(0, ctx)])
    clean = strip_generation(canvas[:, len(ctx):], mask_token_id=tokenizer.mask_token_id,
                             slack_token_id=model.config.slack_token_id, eos_token_id=tokenizer.eos_token_id)[0]
    assert batched[1] == tokenizer.decode(clean, skip_special_tokens=True).split("\n\n")[0]


def test_generate_until_cuts_at_the_first_stop_string(tokenizer):
    torch.manual_seed(0)
    rigged = Rigged(bundled_config(tokenizer)).eval()
    the = tokenizer(" the", add_special_tokens=False).input_ids
    rigged.favoured = the
    lm = MDLMEvalLM(rigged, tokenizer)
    [full] = lm.generate_until([request("Say", {"until": [], "max_gen_toks": 4, "do_sample": False})],
                               disable_tqdm=True)
    assert full == tokenizer.decode(the * (4 // len(the)), skip_special_tokens=True)
    [cut] = lm.generate_until([request("Say", {"until": ["e t"], "max_gen_toks": 4})], disable_tqdm=True)
    assert cut == full.split("e t")[0] and len(cut) < len(full)


def test_generate_until_samples_when_asked_and_runs_block_diffusion_models(model, tokenizer):
    """do_sample=True without a temperature samples at 1 (transformers' default), as lm-eval's tasks expect; a
    block-diffusion model samples its own blocks whatever max_gen_toks is (before: an error unless block_length
    matched block_size and max_gen_toks exceeded it)."""
    lm = MDLMEvalLM(model, tokenizer, block_length=4)
    contexts = ["Now is the winter", "HAMLET. To be"]

    def answers(lm, **kwargs):
        return lm.generate_until([request(c, {"until": [], **kwargs}) for c in contexts], disable_tqdm=True)

    greedy = answers(lm, max_gen_toks=8, do_sample=False)
    assert answers(lm, max_gen_toks=8, do_sample=True) == answers(lm, max_gen_toks=8, temperature=1.0)
    assert answers(lm, max_gen_toks=8, do_sample=True) != greedy
    with pytest.raises(ValueError, match="\\['steps'\\] are set per request"):  # they were silently overwritten
        MDLMEvalLM(model, tokenizer, steps=4)
    with pytest.raises(ValueError, match="request 0: 'steps' is set per request from tokens_per_step"):
        answers(lm, max_gen_toks=8, steps=2)
    torch.manual_seed(0)
    blocks = MDLMForMaskedLM(bundled_config(tokenizer, block_size=4)).eval()
    # is_greedy on a continuation that is not whole blocks (it asked for steps the blocks do not divide)
    scored = MDLMEvalLM(blocks, tokenizer, mc_num=2, compute_is_greedy=True).loglikelihood(
        [request("Now is the", " winter of our discontent")], disable_tqdm=True)
    assert isinstance(scored[0][1], bool)
    for max_gen_toks in (3, 4, 8):
        for block_length in (None, 4):
            [text] = MDLMEvalLM(blocks, tokenizer, block_length=block_length).generate_until(
                [request(contexts[0], {"until": [], "max_gen_toks": max_gen_toks})], disable_tqdm=True)
            assert isinstance(text, str)


def test_bad_arguments_are_named(model, tokenizer):
    with pytest.raises(ValueError, match="tokenizer"):
        MDLMEvalLM(model)
    with pytest.raises(ValueError, match="auto"):
        MDLMEvalLM(model, tokenizer, batch_size="auto")
    with pytest.raises(ValueError, match="mc_num"):
        MDLMEvalLM(model, tokenizer, mc_num=0)
    with pytest.raises(ValueError, match="unknown argument.*temprature"):
        MDLMEvalLM(model, tokenizer, temprature=0.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        MDLMEvalLM(model, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="block_length must be a positive integer"):
        MDLMEvalLM(model, tokenizer, block_length=0)
    no_mask = MDLMForMaskedLM(bundled_config(tokenizer))
    no_mask.config.mask_token_id = None
    with pytest.raises(ValueError, match="no mask_token_id"):
        MDLMEvalLM(no_mask, tokenizer)
    lm = MDLMEvalLM(model, tokenizer, max_length=16)
    with pytest.raises(ValueError, match=r"request 0.*num_beams"):
        lm.generate_until([request("Hi", {"until": [], "num_beams": 4})], disable_tqdm=True)
    with pytest.raises(ValueError, match=r"request 0.*no room"):
        lm.generate_until([request("Hi", {"until": [], "max_gen_toks": 16})], disable_tqdm=True)
    with pytest.raises(ValueError, match=r"request 0.*max_length=16"):
        lm.loglikelihood([request("Hi", " there" * 20)], disable_tqdm=True)


def test_simple_evaluate_on_tiny_tasks(tmp_path, tokenizer):
    """lm_eval end to end: a multiple-choice task and a generation task from local files, answered by a model
    rigged to prefer ' the': accuracy 2/3 (the third question's gold answer is the other choice)."""
    torch.manual_seed(0)
    rigged = Rigged(bundled_config(tokenizer)).eval()
    the = tokenizer(" the", add_special_tokens=False).input_ids
    rigged.favoured = the
    questions = [{"question": f"Question {i}: which word?", "choices": [" the", " king"], "label": label}
                 for i, label in enumerate([0, 0, 1])]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    expected = tokenizer.decode(the * (4 // len(the)), skip_special_tokens=True)
    prompts = [{"prompt": "Say", "answer": expected}, {"prompt": "Sing", "answer": "no"}]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    common = {"dataset_path": "json", "test_split": "train"}
    tasks = [
        {**common, "task": "tiny_choice", "dataset_kwargs": {"data_files": str(tmp_path / "mc.jsonl")},
         "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "choices",
         "doc_to_target": "label", "metric_list": [{"metric": "acc"}]},
        {**common, "task": "tiny_generation", "dataset_kwargs": {"data_files": str(tmp_path / "gen.jsonl")},
         "output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
         "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
         "metric_list": [{"metric": "exact_match"}]},
    ]
    results = lm_eval.simple_evaluate(model=MDLMEvalLM(rigged, tokenizer, mc_num=2), tasks=tasks,
                                      bootstrap_iters=0, log_samples=False)["results"]
    assert results["tiny_choice"]["acc,none"] == pytest.approx(2 / 3)
    assert results["tiny_generation"]["exact_match,none"] == pytest.approx(1 / 2)


def test_command_line_runs_a_task_on_a_saved_folder(tmp_path, tokenizer, monkeypatch, capsys):
    """`python -m hf_mdlm.evaluation.lm_eval --model hf_mdlm ...`: lm_eval's CLI finds the adapter by name, loads
    the folder with trust_remote_code and writes its results."""
    from hf_mdlm.evaluation.lm_eval import main

    torch.manual_seed(0)
    folder = tmp_path / "model"
    MDLMForMaskedLM(bundled_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = [{"question": "Who speaks?", "choices": [" the", " king"], "label": 1}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_cli.yaml").write_text(
        "task: tiny_cli\ndataset_path: json\ndataset_kwargs:\n  data_files: " + str(tmp_path / "mc.jsonl") + "\n"
        "test_split: train\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n")
    out = tmp_path / "results"
    main(["--model", "hf_mdlm", "--model_args", f"pretrained={folder},mc_num=2", "--tasks", "tiny_cli",
          "--include_path", str(tasks), "--output_path", str(out)])
    [results_file] = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]["tiny_cli"]
    assert results["acc,none"] in (0.0, 1.0)


# ----------------------------------------------------------------------------- GSM8K's format, chat templates, ranks

GSM8K_MINI = Path(__file__).resolve().parent / "fixtures" / "gsm8k-mini"
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def gsm8k_task_folder(tmp_path):
    """The shipped GSM8K-format task, its data path made absolute (its yaml names it from the repository root)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    text = (GSM8K_MINI / "gsm8k_mini.yaml").read_text()
    (folder / "gsm8k_mini.yaml").write_text(text.replace("tests/fixtures/gsm8k-mini/test.jsonl",
                                                         str(GSM8K_MINI / "test.jsonl")))
    return folder


def test_gsm8k_format_task_with_the_chat_template_and_few_shot_turns(model, tokenizer, tmp_path):
    from lm_eval.tasks import TaskManager

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    out = lm_eval.simple_evaluate(model=MDLMEvalLM(model, chat, batch_size=4), tasks=["gsm8k_mini"],
                                  task_manager=TaskManager(include_path=str(gsm8k_task_folder(tmp_path))),
                                  num_fewshot=2, apply_chat_template=True, fewshot_as_multiturn=True,
                                  log_samples=True, bootstrap_iters=0)
    samples = out["samples"]["gsm8k_mini"]
    assert sorted(s["doc_id"] for s in samples) == list(range(6))
    prompt = samples[0]["arguments"][0][0]  # (context, generation settings) of its one request
    # two worked examples as user/assistant turns, then the question, then the generation prompt
    assert prompt.count("<user>") == 3 and prompt.count("<assistant>") == 3 and prompt.endswith("<assistant>")
    assert "Question:" in prompt and "#### " in prompt
    assert 0.0 <= out["results"]["gsm8k_mini"]["exact_match,strict-match"] <= 1.0
    with pytest.raises(ValueError, match="the tokenizer has no chat template"):
        MDLMEvalLM(model, tokenizer).apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_two_processes_score_each_example_once_and_agree_with_one(tmp_path, tokenizer):
    """`torchrun --nproc_per_node 2 -m hf_mdlm.evaluation.lm_eval ...` splits the requests over two gloo processes:
    every problem answered once, with the answers and the score of a single process, batches of 2 made differently.
    (Zero-shot: lm_eval's few-shot sampler draws other examples for a document when the documents are split over
    processes, for any model, so few-shot prompts differ between the two runs.)"""
    import os
    import subprocess
    import sys

    torch.manual_seed(0)
    folder = tmp_path / "model"
    MDLMForMaskedLM(bundled_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tasks = gsm8k_task_folder(tmp_path)

    def run(launcher, out):
        command = [*launcher, "hf_mdlm.evaluation.lm_eval", "--model", "hf_mdlm", "--model_args",
                   f"pretrained={folder}", "--device", "cpu", "--batch_size", "2", "--tasks", "gsm8k_mini", "--include_path",
                   str(tasks), "--output_path", str(out), "--log_samples"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
               "TOKENIZERS_PARALLELISM": "false"}
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        [samples] = out.rglob("samples_gsm8k_mini_*.jsonl")
        [results] = out.rglob("results_*.json")
        answers = [json.loads(line) for line in samples.read_text().splitlines()]
        return ({a["doc_id"]: a["resps"] for a in answers}, [a["doc_id"] for a in answers],
                json.loads(results.read_text())["results"]["gsm8k_mini"]["exact_match,strict-match"])

    one, one_ids, one_score = run([sys.executable, "-m"], tmp_path / "one")
    two, two_ids, two_score = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node", "2", "-m"], tmp_path / "two")
    assert sorted(two_ids) == sorted(one_ids) == list(range(6))  # each problem once
    assert two == one and two_score == one_score
