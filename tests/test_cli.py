"""Tests of `hf_mdlm/cli.py`: the command-line value parsers that the scripts share name what they refuse."""

import argparse

import pytest


def test_fast_samplers_of_the_evaluation_cli():
    from hf_mdlm.cli import describe_settings, parse_fast_samplers

    parsed = parse_fast_samplers("prefix, dual,dual+kv_cache_refresh=4,factor=1,kv_cache=dual+threshold=0.9")
    assert parsed == [{"kv_cache": "prefix"}, {"kv_cache": "dual"}, {"kv_cache": "dual", "kv_cache_refresh": 4},
                      {"factor": 1.0}, {"kv_cache": "dual", "threshold": 0.9}]
    assert [describe_settings(s) for s in parsed][2] == "kv_cache=dual+kv_cache_refresh=4"
    with pytest.raises(argparse.ArgumentTypeError, match="fast sampler 'full': kv_cache must be None, 'prefix' or 'dual'"):
        parse_fast_samplers("prefix,full")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown setting 'steps'"):
        parse_fast_samplers("steps=4")
    with pytest.raises(argparse.ArgumentTypeError, match="bad value 'x' for factor"):
        parse_fast_samplers("factor=x")
    with pytest.raises(argparse.ArgumentTypeError, match="kv_cache_refresh=2 refreshes a KV cache, but kv_cache is None"):
        parse_fast_samplers("kv_cache_refresh=2")


def test_boolean_flags_take_no_value_true_or_false(capsys):
    """As every `TrainingArguments` bool: `--flag`, `--flag true` and `--flag false` (`--overwrite_output_dir true`
    was an error when the flag was store_true)."""
    from hf_mdlm.cli import add_bool_flag

    parser = argparse.ArgumentParser()
    add_bool_flag(parser, "--overwrite_output_dir")
    add_bool_flag(parser, "--stream", default=None)
    parse = parser.parse_args
    assert parse([]).overwrite_output_dir is False and parse([]).stream is None
    assert parse(["--overwrite_output_dir"]).overwrite_output_dir is True
    assert parse(["--overwrite_output_dir", "true"]).overwrite_output_dir is True
    assert parse(["--overwrite_output_dir", "False"]).overwrite_output_dir is False
    assert parse(["--stream", "no"]).stream is False
    with pytest.raises(SystemExit):
        parse(["--overwrite_output_dir", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_every_script_flag_that_is_a_switch_takes_a_value():
    """No script keeps an argparse store_true: each boolean goes through add_bool_flag."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    scripts = [*root.glob("examples/*.py"), *root.glob("bench/*.py"), *root.glob("experiments/*.py")]
    assert scripts and [s.name for s in scripts if 'action="store_true"' in s.read_text()] == []


def test_counts_and_sizes_refuse_what_they_cannot_mean():
    from hf_mdlm.cli import non_negative_int, positive_int

    assert non_negative_int("0") == 0 and positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 0, got -1"):
        non_negative_int("-1")  # --num_samples -1 used to draw none, silently
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 1, got 0"):
        positive_int("0")


def test_generation_flags_default_to_the_folder_and_none_switches_a_saved_setting_off():
    from hf_mdlm.cli import add_generation_flags, generation_settings

    parser = argparse.ArgumentParser()
    add_generation_flags(parser)
    assert generation_settings(parser.parse_args([])) == {}  # nothing given: the folder's own settings
    given = parser.parse_args(["--kv_cache", "none", "--threshold", "None", "--steps", "8", "--eos_token_id", "3",
                               "--suppress_slack", "--temperature", "0.5"])
    assert generation_settings(given) == {"kv_cache": None, "threshold": None, "steps": 8, "eos_token_id": 3,
                                          "suppress_slack": True, "temperature": 0.5}
    with pytest.raises(SystemExit):  # a setting with a value as its default has no "none"
        parser.parse_args(["--temperature", "none"])


def test_generation_settings_are_checked_against_the_model_before_any_prompt():
    import torch

    from conftest import tiny_config
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.cli import check_generation_settings

    torch.manual_seed(0)
    blocks = MDLMForMaskedLM(tiny_config(block_size=4))
    check_generation_settings(blocks, {"max_new_tokens": 6})  # its own blocks: fine
    with pytest.raises(SystemExit, match="generation settings: this model attends in blocks of block_size=4"):
        check_generation_settings(blocks, {"block_length": 8})
    with pytest.raises(SystemExit, match="generation settings: threshold must be in"):
        check_generation_settings(blocks, {"threshold": 1.5})


def test_probabilities_and_devices_are_checked_when_parsed(monkeypatch):
    import torch

    from hf_mdlm.cli import device_flag, probability_below_one

    assert probability_below_one("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="must be in \\[0, 1\\), got 1.5"):
        probability_below_one("1.5")  # --elbo_slack_prob 1.5 used to fail after the model and data loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_flag("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="'cuda:1': this torch has no CUDA device"):
        device_flag("cuda:1")  # an AssertionError from torch after the model loaded
