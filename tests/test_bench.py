"""The benchmarks' code paths run (tiny sizes, CPU): the GPU check must not fail on its first real run, and
`bench/memory_table.py` prints its table."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_device_check_training_paths_run_tiny():
    device_check = _load("device_check")
    for kind in ("finetune", "llada8b"):
        row = device_check.run(kind, tiny=True, steps=2, batch=2, canvas=16)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 12 and float(cells[6]) > 0 and 0 < float(cells[8].rstrip("%")) <= 100, row
        assert cells[11].endswith("GiB"), row


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_device_check_refuses_a_machine_without_cuda():
    """It built LLaDA-8B's shape in CPU memory (killed for memory on a 24 GB machine) or trained on the CPU."""
    with pytest.raises(SystemExit):
        _load("device_check").main(["llada8b"])


def test_cache_table_runs_and_agrees_on_the_uncached_row(capsys):
    _load("bench_generate").main(["--quick", "--caches", "--batch_sizes", "1", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in rows[1:]]
    assert len(body) == 2 * 3 * 4  # batches x decodings (low-confidence, threshold, factor) x caches
    exact = {(c[0], c[2]): c for c in body if c[3] == "none"}
    for cells in body:
        batch, canvas, decoding, cache, rate, calls, positions, differing, speed = cells[:9]
        none = exact[(batch, decoding)]
        assert float(rate) > 0 and int(calls) > 0 and 0 <= int(differing) <= int(batch) * int(canvas)
        # the speed-up is this row's rate over the exact sampler's, measured in the same run
        assert float(speed.rstrip("x")) == pytest.approx(float(rate) / float(none[4]), abs=0.02)
        if cache == "none":
            assert differing == "0"
        else:  # a cache runs fewer positions through the model than the exact sampler
            assert int(positions) < int(none[6]), cells
    dual = {(c[0], c[2]): int(c[6]) for c in body if c[3] == "dual"}
    for cells in body:  # with a fixed number of calls, a refreshed cache runs more positions than the plain one
        if cells[3].startswith("dual, refresh") and cells[2] == "low-confidence":
            assert int(cells[6]) > dual[(cells[0], cells[2])], cells


def test_block_table_runs_both_attentions_and_the_block_model_runs_fewer_positions(capsys):
    _load("bench_generate").main(["--quick", "--blocks"])  # batches 1 and 4
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in rows[1:]]
    assert [(c[0], c[2].split()[0], c[3]) for c in body] == [
        (b, a, k) for b in ("1", "4") for a in ("bidirectional", "blocks") for k in ("none", "dual")]
    for batch in ("1", "4"):
        positions = {(c[2].split()[0], c[3]): int(c[6]) for c in body if c[0] == batch}
        # without a cache a block model's calls stop at the block end; its cache is exact, and smaller still
        assert positions["blocks", "none"] < positions["bidirectional", "none"]
        assert positions["blocks", "dual"] < positions["blocks", "none"]


TABLE = _load("memory_table")


def test_memory_table_prints_every_model(capsys):
    TABLE.main([])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == list(TABLE.MODELS)


def test_grpo_bench_runs_tiny(capsys):
    pytest.importorskip("trl")
    _load("bench_grpo").main(["--tiny", "--steps", "1", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 4  # two estimators x exact and fast rollouts
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        rollout, step = float(cells[5]), float(cells[6])
        assert 0 < rollout < step  # the sampler's share of a step that also scores and updates
