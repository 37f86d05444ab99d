"""Tests of `hf_mdlm/cli.py`: the command-line value parsers that the scripts share name what they refuse."""

import argparse

import pytest


def test_kv_cache_list_of_the_evaluation_cli():
    from hf_mdlm.cli import parse_kv_caches

    assert parse_kv_caches("none,prefix,dual") == ["prefix", "dual"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown kv_cache \['full'\]: expected prefix, dual"):
        parse_kv_caches("prefix,full")


def test_sampler_names_are_checked_against_the_sampler():
    import argparse

    from hf_mdlm.cli import parse_samplers

    assert parse_samplers("ancestral,mine:entropy:0.5")["mine"] == {"remasking": "entropy", "temperature": 0.5}
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown remasking 'entropi' in sampler 'x:entropi:1'"):
        parse_samplers("x:entropi:1")
    with pytest.raises(argparse.ArgumentTypeError, match="bad temperature"):
        parse_samplers("x:random:hot")
