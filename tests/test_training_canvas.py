"""Tests for hf_mdlm.training.canvas: schedules, time sampling, masking, the slack insertion rule and the
canvases (build_canvases)."""

import math

import pytest
import torch

from hf_mdlm.data import DiffusionCollator
from hf_mdlm.training.canvas import (
    CosineSchedule,
    LinearSchedule,
    NoiseSchedule,
    build_canvases,
    get_schedule,
    low_discrepancy_times,
    mask_canvas,
    sample_times,
)

EPS = 1e-3
PAD, EOS, SLACK = 0, 2, 4  # the bundled tokenizer's ids


# ----------------------------------------------------------------------------- schedules


def test_linear_schedule_values_by_hand():
    s = LinearSchedule(eps=EPS)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    expected = torch.tensor([EPS, 0.25 * 0.999 + EPS, 0.5 * 0.999 + EPS, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.mask_prob(t), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(s.weight(t), 1.0 / expected, rtol=1e-15, atol=0)
    # Scalars work too and the t = 0 weight is finite (1 / eps).
    assert float(s.weight(0.0)) == pytest.approx(1000.0)


def test_linear_weight_is_elbo_weight_up_to_constant():
    s = LinearSchedule(eps=EPS)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    elbo = (1 - EPS) / s.mask_prob(t)  # m'(t) / m(t)
    torch.testing.assert_close(s.weight(t) * (1 - EPS), elbo, rtol=1e-14, atol=0)


def test_cosine_schedule_values_by_hand():
    s = CosineSchedule(eps=EPS)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    m_half = EPS + (1 - EPS) * (1 - math.cos(math.pi / 4))
    torch.testing.assert_close(
        s.mask_prob(t), torch.tensor([EPS, m_half, 1.0], dtype=torch.float64), rtol=0, atol=1e-15
    )
    w_half = (1 - EPS) * (math.pi / 2) * math.sin(math.pi / 4) / m_half
    w = s.weight(t)
    assert float(w[0]) == 0.0
    assert float(w[1]) == pytest.approx(w_half, rel=1e-14)
    assert float(w[2]) == pytest.approx((1 - EPS) * math.pi / 2, rel=1e-14)


def test_cosine_weight_matches_numerical_derivative():
    s = CosineSchedule(eps=EPS)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = (s.mask_prob(t + h) - s.mask_prob(t - h)) / (2 * h) / s.mask_prob(t)
    torch.testing.assert_close(s.weight(t), numeric, rtol=1e-8, atol=0)


@pytest.mark.parametrize("cls", [LinearSchedule, CosineSchedule])
def test_schedules_are_monotone_probabilities(cls):
    s = cls(eps=0.01)
    m = s.mask_prob(torch.linspace(0, 1, 101))
    assert bool((m[1:] >= m[:-1]).all())
    assert float(m[0]) == pytest.approx(0.01) and float(m[-1]) == pytest.approx(1.0)


def test_get_schedule_factory():
    lin = get_schedule("linear", 0.01)
    cos = get_schedule("cosine", 0.02)
    assert isinstance(lin, LinearSchedule) and lin.eps == 0.01
    assert isinstance(cos, CosineSchedule) and cos.eps == 0.02
    assert isinstance(lin, NoiseSchedule)
    with pytest.raises(ValueError, match="geometric"):
        get_schedule("geometric", 1e-3)


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.0])
def test_schedule_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        LinearSchedule(eps=eps)


# ----------------------------------------------------------------------------- times


@pytest.mark.parametrize("total", [1, 2, 7, 64])
@pytest.mark.parametrize("u", [0.0, 0.3141, 0.999999])
def test_low_discrepancy_times_hit_each_stratum_once(total, u):
    t = low_discrepancy_times(u, torch.arange(total), total)
    assert t.dtype == torch.float32 and t.shape == (total,)
    assert bool(((t >= 0) & (t <= 1)).all())
    strata = torch.clamp((t.double() * total).floor().long(), max=total - 1)
    assert sorted(strata.tolist()) == list(range(total))
    # Hand check of the formula.
    expected = torch.tensor([math.fmod(u + j / total, 1.0) for j in range(total)])
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-6)


def test_low_discrepancy_times_split_across_processes():
    # Two "processes" each taking half of a global batch of 8 reproduce the global draw.
    full = low_discrepancy_times(0.42, torch.arange(8), 8)
    halves = torch.cat(
        [low_discrepancy_times(0.42, torch.arange(0, 4), 8), low_discrepancy_times(0.42, torch.arange(4, 8), 8)]
    )
    assert torch.equal(full, halves)


def test_low_discrepancy_times_validates():
    with pytest.raises(ValueError, match="total"):
        low_discrepancy_times(0.1, torch.arange(2), 0)
    with pytest.raises(ValueError, match="positions"):
        low_discrepancy_times(0.1, torch.tensor([0, 5]), 4)
    with pytest.raises(ValueError, match="integer"):
        low_discrepancy_times(0.1, torch.tensor([0.5]), 4)


def test_sample_times_seeded_and_stratified():
    a = sample_times(16, generator=torch.Generator().manual_seed(3))
    b = sample_times(16, generator=torch.Generator().manual_seed(3))
    c = sample_times(16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    strata = (a.double() * 16).floor().long().clamp(max=15)
    assert sorted(strata.tolist()) == list(range(16))
    # Evenly spaced: consecutive differences are 1/16 modulo 1.
    diffs = torch.frac(a[1:].double() - a[:-1].double() + 1.0)
    torch.testing.assert_close(diffs, torch.full_like(diffs, 1 / 16), rtol=0, atol=1e-6)


def test_sample_times_iid_mode():
    g = torch.Generator().manual_seed(0)
    t = sample_times(20000, generator=g, antithetic=False)
    assert t.shape == (20000,) and bool(((t >= 0) & (t < 1)).all())
    assert abs(float(t.mean()) - 0.5) < 0.01
    # iid times are not evenly spaced (antithetic ones would be).
    small = sample_times(16, generator=torch.Generator().manual_seed(3), antithetic=False)
    strata = (small * 16).floor().long()
    assert len(set(strata.tolist())) < 16
    # Seeded reproducibility for the iid mode too.
    again = sample_times(16, generator=torch.Generator().manual_seed(3), antithetic=False)
    assert torch.equal(small, again)


# ----------------------------------------------------------------------------- masking


def _canvas(batch=4, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (batch, seq), generator=g)
    maskable = torch.zeros(batch, seq, dtype=torch.bool)
    maskable[:, seq // 3 :] = True
    maskable[0, -2:] = False  # padding
    return ids, maskable


def test_mask_canvas_respects_maskable_and_writes_mask_id():
    ids, maskable = _canvas()
    noised, masked = mask_canvas(
        ids, torch.ones(4), maskable, mask_token_id=99, schedule=LinearSchedule(), generator=torch.Generator().manual_seed(1)
    )
    # t = 1 masks every maskable position and nothing else.
    assert torch.equal(masked, maskable)
    assert bool((noised[masked] == 99).all())
    assert torch.equal(noised[~masked], ids[~masked])
    assert noised.dtype == ids.dtype and ids.max() < 99  # input untouched


def test_mask_canvas_empirical_rate():
    seq = 20000
    ids = torch.randint(0, 10, (4, seq))
    maskable = torch.ones(4, seq, dtype=torch.bool)
    maskable[:, :1000] = False
    t = torch.tensor([0.0, 0.2, 0.5, 0.9])
    for schedule in (LinearSchedule(), CosineSchedule()):
        _, masked = mask_canvas(
            ids, t, maskable, mask_token_id=11, schedule=schedule, generator=torch.Generator().manual_seed(7)
        )
        assert not bool(masked[:, :1000].any())
        rate = masked[:, 1000:].double().mean(1)
        p = schedule.mask_prob(t).double()
        sigma = torch.sqrt(p * (1 - p) / (seq - 1000))
        assert bool(((rate - p).abs() <= 5 * sigma + 1e-12).all()), (rate, p)


def test_mask_canvas_seeded_reproducible():
    ids, maskable = _canvas()
    t = torch.full((4,), 0.5)
    kwargs = dict(mask_token_id=99, schedule=LinearSchedule())
    a = mask_canvas(ids, t, maskable, generator=torch.Generator().manual_seed(5), **kwargs)
    b = mask_canvas(ids, t, maskable, generator=torch.Generator().manual_seed(5), **kwargs)
    c = mask_canvas(ids, t, maskable, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_per_row_generators_make_rows_independent_of_the_batch():
    ids, maskable = _canvas(batch=4, seq=40)
    maskable[:] = True
    t = torch.tensor([0.3, 0.5, 0.7, 0.4])
    kwargs = dict(mask_token_id=99, schedule=LinearSchedule())

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    full_ids, full_mask = mask_canvas(ids, t, maskable, generator=gens([10, 11, 12, 13]), **kwargs)
    # Row 2 alone, and row 2 in a different batch (other rows, other order).
    solo_ids, solo_mask = mask_canvas(ids[2:3], t[2:3], maskable[2:3], generator=gens([12]), **kwargs)
    mixed_ids, mixed_mask = mask_canvas(
        ids[[3, 2, 0]], t[[3, 2, 0]], maskable[[3, 2, 0]], generator=gens([99, 12, 98]), **kwargs
    )
    assert torch.equal(full_mask[2], solo_mask[0]) and torch.equal(full_mask[2], mixed_mask[1])
    assert torch.equal(full_ids[2], mixed_ids[1])
    # Sanity: the different generators of the other rows did change their noise.
    assert not torch.equal(full_mask[3], mixed_mask[0])


def test_mask_canvas_validation():
    ids, maskable = _canvas()
    t = torch.full((4,), 0.5)
    s = LinearSchedule()
    with pytest.raises(ValueError, match="mask_token_id"):
        mask_canvas(ids, t, maskable, mask_token_id=None, schedule=s)
    with pytest.raises(ValueError, match="maskable"):
        mask_canvas(ids, t, maskable[:, :-1], mask_token_id=1, schedule=s)
    with pytest.raises(ValueError, match="bool"):
        mask_canvas(ids, t, maskable.long(), mask_token_id=1, schedule=s)
    with pytest.raises(ValueError, match="integer"):
        mask_canvas(ids.float(), t, maskable, mask_token_id=1, schedule=s)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        mask_canvas(ids, t[:3], maskable, mask_token_id=1, schedule=s)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mask_canvas(ids, t + 1, maskable, mask_token_id=1, schedule=s)
    with pytest.raises(ValueError, match="generators"):
        mask_canvas(ids, t, maskable, mask_token_id=1, schedule=s, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        mask_canvas(ids[0], t, maskable[0], mask_token_id=1, schedule=s)


# ----------------------------------------------------------------------------- the slack insertion rule


@pytest.mark.parametrize("rule, prob", [("bernoulli", 0.3), ("bernoulli", 0.5), ("fixed", 0.4), ("none", 0.3)])
@pytest.mark.parametrize("n, room", [(3, 10), (3, 2), (4, 1), (2, 0)])
def test_slack_layout_probabilities_match_the_draws(rule, prob, n, room):
    """`slack_gaps_log_prob` against brute force: summed over every layout it is 1, and each layout's probability
    is the frequency with which `draw_slack_gaps` (the training rule) draws it."""
    import itertools
    from collections import Counter

    from hf_mdlm.training.canvas import draw_slack_gaps, slack_gaps_log_prob

    layouts = list(itertools.product((False, True), repeat=n + 1))
    probs = {layout: math.exp(slack_gaps_log_prob(sum(layout), n, room, rule, prob)) for layout in layouts}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    draws = 6000
    counts = Counter(tuple(draw_slack_gaps(n, room, rule, prob, g).tolist()) for _ in range(draws))
    for layout in layouts:
        assert counts[layout] / draws == pytest.approx(probs[layout], abs=0.025), layout


# ----------------------------------------------------------------------------- build_canvases


def collate(prompts, responses, L):
    return DiffusionCollator(PAD, L)([{"prompt_ids": p, "response_ids": r} for p, r in zip(prompts, responses)])


def canvas_of(clean, b, P, L):
    return clean[b, P : P + L].tolist()


def test_build_canvases_structure_and_masks():
    L = 12
    prompts = [[1, 50, 51], [1], []]
    responses = [[60, 61, 62, EOS], [70, EOS], [80, 81, 82, 83, 84, EOS]]
    batch = collate(prompts, responses, L)
    for fill in (EOS, SLACK):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        clean, cmask, amask = build_canvases(
            batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"], canvas_length=L,
            slack_token_id=SLACK, fill_token_id=fill, slack_rule="bernoulli", slack_prob=0.5, generators=gens,
        )
        T = batch["input_ids"].shape[1]
        assert clean.shape == cmask.shape == amask.shape == (3, T) and T == 3 + L
        assert cmask.dtype == torch.bool and amask.dtype == torch.long
        for b, (p, r) in enumerate(zip(prompts, responses)):
            P = len(p)
            assert clean[b, :P].tolist() == p  # prompt untouched
            canvas = canvas_of(clean, b, P, L)
            kept = [t for t in canvas if t != SLACK]
            n_fill = L - len(r) - canvas.count(SLACK) if fill == EOS else 0
            assert kept == r + [EOS] * n_fill  # deleting <slack> gives back the response, then the fill
            if fill == EOS:
                # after the response every non-slack token is fill
                assert kept[len(r):] == [EOS] * n_fill
            assert cmask[b].tolist() == [False] * P + [True] * L + [False] * (T - P - L)
            assert amask[b].tolist() == [1] * (P + L) + [0] * (T - P - L)
            assert clean[b, P + L :].tolist() == [PAD] * (T - P - L)


def test_build_canvases_rules_and_statistics():
    L, n, B = 80, 50, 400
    resp = list(range(100, 100 + n - 1)) + [EOS]
    batch = collate([[1]] * B, [resp] * B, L)
    common = dict(canvas_length=L, slack_token_id=SLACK, fill_token_id=EOS)
    torch.manual_seed(0)
    clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                 slack_rule="bernoulli", slack_prob=0.1, **common)
    k = (clean == SLACK).sum(1).float()
    assert abs(k.mean().item() - 0.1 * (n + 1)) < 0.5  # E[k] = p (n + 1) = 5.1
    assert k.std().item() > 1.0  # really random per row
    # slacks land in every gap: the first and last gaps are used, gaps are near uniform
    positions = torch.zeros(n + 1)
    for b in range(B):
        canvas = clean[b, 1 : 1 + L]
        is_slack = canvas == SLACK
        gap_of_slack = torch.cumsum((~is_slack).long(), 0)[is_slack]  # tokens before each slack
        positions.index_add_(0, gap_of_slack.clamp(max=n), torch.ones(gap_of_slack.numel()))
    assert positions.min() > 15 and positions.max() < 80  # expected 40 per gap

    clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                 slack_rule="fixed", slack_prob=0.1, **common)
    assert ((clean == SLACK).sum(1) == 5).all()  # round(0.1 * 50)
    clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                 slack_rule="none", slack_prob=0.1, **common)
    assert (clean == SLACK).sum() == 0
    assert (clean[:, 1 : 1 + n] == batch["input_ids"][:, 1 : 1 + n]).all()


def test_build_canvases_drops_slacks_to_fit():
    L = 10
    batch = collate([[1], [1]], [[5] * 9 + [EOS], [5] * 7 + [EOS]], L)
    clean, _, _ = build_canvases(
        batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"], canvas_length=L,
        slack_token_id=SLACK, fill_token_id=EOS, slack_rule="bernoulli", slack_prob=1.0,
    )
    assert canvas_of(clean, 0, 1, L) == [5] * 9 + [EOS]  # full canvas: no room, no slack, response intact
    c1 = canvas_of(clean, 1, 1, L)
    assert c1.count(SLACK) == 2 and [t for t in c1 if t != SLACK] == [5] * 7 + [EOS]


def test_build_canvases_per_row_generators_are_independent():
    L = 16
    a = ([1, 40], [60, 61, 62, 63, 64, EOS])
    b = ([1, 41, 42, 43], [70, 71, EOS])
    c = ([], [80] * 10 + [EOS])

    def run(rows, seeds):
        batch = collate([r[0] for r in rows], [r[1] for r in rows], L)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                     canvas_length=L, slack_token_id=SLACK, fill_token_id=EOS,
                                     slack_prob=0.4, generators=gens)
        return [canvas_of(clean, i, len(r[0]), L) for i, r in enumerate(rows)]

    first = run([a, b], [123, 5])[0]
    assert run([c, a], [9, 123])[1] == first  # same row, same generator state: same canvas
    assert run([b, c, a], [1, 2, 123])[2] == first
    draws = {tuple(run([a], [s])[0]) for s in range(20)}
    assert len(draws) > 3  # the generator matters


def test_build_canvases_validation():
    batch = collate([[1]], [[5, EOS]], 4)
    ids, P, R = batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"]
    kw = dict(canvas_length=4, slack_token_id=SLACK, fill_token_id=EOS)
    with pytest.raises(ValueError, match="slack_rule"):
        build_canvases(ids, P, R, slack_rule="poisson", **kw)
    with pytest.raises(ValueError, match="slack_prob"):
        build_canvases(ids, P, R, slack_prob=1.5, **kw)
    with pytest.raises(ValueError, match="exceed canvas_length"):
        build_canvases(ids, P, torch.tensor([5]), **kw)
    with pytest.raises(ValueError, match="batch width"):
        build_canvases(ids[:, :3], P, R, **kw)
    with pytest.raises(ValueError, match="generators"):
        build_canvases(ids, P, R, generators=[torch.Generator(), torch.Generator()], **kw)
    with pytest.raises(ValueError, match=r"prompt_lengths must have shape \(1,\)"):
        build_canvases(ids, torch.tensor([1, 1]), R, **kw)
    with pytest.raises(ValueError, match="input_ids"):
        build_canvases(ids[0], P, R, **kw)
    with pytest.raises(ValueError, match="needs a slack_token_id"):
        build_canvases(ids, P, R, canvas_length=4, slack_token_id=None, fill_token_id=EOS)
    clean, _, _ = build_canvases(ids, P, R, canvas_length=4, slack_token_id=None, fill_token_id=EOS, slack_rule="none")
    assert clean[0].tolist() == [1, 5, EOS, EOS, EOS]  # a CE-only baseline needs no slack token
    bad = collate([[1]], [[5, SLACK, EOS]], 4)
    with pytest.raises(ValueError, match="already contains the slack token"):
        build_canvases(bad["input_ids"], bad["prompt_lengths"], bad["response_lengths"], **kw)
