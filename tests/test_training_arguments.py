"""Tests of `hf_mdlm/training/arguments.py`: MDLMTrainingArguments refuses bad settings by name, and one rule
says when a run needs the <slack> token."""

import pytest
import torch

from hf_mdlm.training.arguments import MDLMTrainingArguments


def test_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="loss_normalization"):
        MDLMTrainingArguments(output_dir=str(tmp_path), loss_normalization="tokens")
    with pytest.raises(ValueError, match="slack_rule"):
        MDLMTrainingArguments(output_dir=str(tmp_path), slack_rule="sometimes")
    with pytest.raises(ValueError, match="not both 0"):
        MDLMTrainingArguments(output_dir=str(tmp_path), ce_weight=0.0, ctc_weight=0.0)
    with pytest.raises(ValueError, match=r"--time_eps 0.0 must be in \(0, 1\)"):  # named, not the schedule's eps
        MDLMTrainingArguments(output_dir=str(tmp_path), time_eps=0.0)


def test_one_rule_says_when_a_run_needs_slack(tmp_path):
    from hf_mdlm.training.arguments import MDLMTrainingArguments
    from hf_mdlm.training.canvas import build_canvases

    def args(**kw):
        return MDLMTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)

    assert not args(ctc_weight=0, slack_prob=0).needs_slack_token
    assert not args(ctc_weight=0, slack_rule="none").needs_slack_token
    assert args(ctc_weight=0, slack_prob=0.1).canvas_holds_slack
    assert args(ctc_weight=0, slack_prob=0, canvas_padding="slack").canvas_holds_slack
    no_slack = args(ctc_weight=1, slack_prob=0)
    assert no_slack.needs_slack_token and not no_slack.canvas_holds_slack  # the CTC's blank is <slack>
    ids = torch.tensor([[1, 2, 3, 0, 0]])
    clean, _, _ = build_canvases(ids, torch.tensor([1]), torch.tensor([2]), canvas_length=4, slack_token_id=None,
                                 fill_token_id=9, slack_prob=0)  # nothing inserted: no slack id needed
    assert clean.tolist() == [[1, 2, 3, 9, 9]]
    with pytest.raises(ValueError, match="slack_prob=0.1 needs a slack_token_id"):
        build_canvases(ids, torch.tensor([1]), torch.tensor([2]), canvas_length=4, slack_token_id=None,
                       fill_token_id=9, slack_prob=0.1)
