"""Masked DQN building blocks: the target and epsilon-greedy acting, with answers by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskrl.agents import dqn_target, masked_argmax, masked_epsilon_greedy

T, F = True, False
NAN, INF = math.nan, math.inf

# Two next states, three actions. Unmasked, the max of the target net is 9 (row 0)
# and 8 (row 1); over the valid actions only it is 3 and 4.
Q_TARGET = torch.tensor([[1.0, 9.0, 3.0], [4.0, 2.0, 8.0]])
Q_ONLINE = torch.tensor([[5.0, 100.0, 1.0], [0.0, 3.0, 50.0]])
MASK = torch.tensor([[T, F, T], [T, T, F]])
REWARD = torch.tensor([0.5, -1.0])
NOT_DONE = torch.tensor([F, F])


def test_masked_max_by_hand() -> None:
    target = dqn_target(None, Q_TARGET, MASK, REWARD, NOT_DONE, 0.9, double=False)
    # 0.5 + 0.9 * max(1, 3) and -1 + 0.9 * max(4, 2).
    torch.testing.assert_close(target, torch.tensor([0.5 + 0.9 * 3, -1.0 + 0.9 * 4]))
    # The unmasked max would have bootstrapped from 9 and 8.
    unmasked = dqn_target(None, Q_TARGET, torch.ones(2, 3, dtype=torch.bool), REWARD, NOT_DONE, 0.9,
                          double=False)  # fmt: skip
    torch.testing.assert_close(unmasked, torch.tensor([0.5 + 0.9 * 9, -1.0 + 0.9 * 8]))


def test_double_dqn_by_hand() -> None:
    target = dqn_target(Q_ONLINE, Q_TARGET, MASK, REWARD, NOT_DONE, 0.9)
    # Online argmax over the valid actions: row 0 {0: 5, 2: 1} -> 0, row 1 {0: 0, 1: 3} -> 1;
    # valued by the target net: 1 and 2. (Unmasked, the online net picks 1 and 2: 9 and 8.)
    torch.testing.assert_close(target, torch.tensor([0.5 + 0.9 * 1, -1.0 + 0.9 * 2]))
    unmasked = dqn_target(Q_ONLINE, Q_TARGET, torch.ones(2, 3, dtype=torch.bool), REWARD,
                          NOT_DONE, 0.9)  # fmt: skip
    torch.testing.assert_close(unmasked, torch.tensor([0.5 + 0.9 * 9, -1.0 + 0.9 * 8]))


def test_invalid_entries_never_matter_whatever_their_value() -> None:
    poisoned_t = Q_TARGET.clone()
    poisoned_o = Q_ONLINE.clone()
    poisoned_t[~MASK] = torch.tensor([INF, NAN])
    poisoned_o[~MASK] = torch.tensor([NAN, INF])
    for double in (True, False):
        want = dqn_target(Q_ONLINE, Q_TARGET, MASK, REWARD, NOT_DONE, 0.9, double=double)
        got = dqn_target(poisoned_o, poisoned_t, MASK, REWARD, NOT_DONE, 0.9, double=double)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("double", [True, False])
def test_terminal_rows_give_the_reward_even_with_no_valid_action(double: bool) -> None:
    q_t = torch.tensor([[NAN, INF, -INF], [4.0, 2.0, 8.0], [1.0, 2.0, 3.0]])
    q_o = torch.tensor([[INF, NAN, 0.0], [0.0, 3.0, 50.0], [0.0, 0.0, 9.0]])
    mask = torch.tensor([[F, F, F], [T, T, F], [T, T, T]])  # row 0: a finished game
    reward = torch.tensor([1.0, -1.0, 2.0])
    done = torch.tensor([T, F, T])
    target = dqn_target(q_o, q_t, mask, reward, done, 0.99, double=double)
    assert target[0].item() == 1.0 and target[2].item() == 2.0  # exactly the reward
    assert target[1].item() == pytest.approx(-1.0 + 0.99 * (2.0 if double else 4.0))
    # terminated as 0/1 floats (as replay buffers often store it) gives the same.
    as_float = dqn_target(q_o, q_t, mask, reward, done.float(), 0.99, double=double)
    torch.testing.assert_close(as_float, target)


def test_all_invalid_next_mask_of_a_non_terminal_transition_raises() -> None:
    mask = torch.tensor([[T, F, T], [F, F, F], [F, F, F], [F, F, F]])
    done = torch.tensor([F, F, T, F])
    q = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"next_mask has no valid action in row\(s\) \[1, 3\] "
                       r"whose transition is not terminated"):  # fmt: skip
        dqn_target(q, q, mask, torch.zeros(4), done, 0.9)
    with pytest.raises(ValueError, match=r"row\(s\) \[1, 3\]"):
        dqn_target(None, q, mask, torch.zeros(4), done, 0.9, double=False)


@pytest.mark.parametrize("double", [True, False])
def test_all_valid_masks_give_the_plain_formula(double: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q_o, q_t = torch.randn(64, 7, generator=g), torch.randn(64, 7, generator=g)
    reward = torch.randn(64, generator=g)
    done = torch.rand(64, generator=g) < 0.3
    a = q_o.argmax(-1) if double else q_t.argmax(-1)
    plain = reward + 0.97 * (1 - done.float()) * q_t.gather(1, a[:, None]).squeeze(1)
    got = dqn_target(q_o, q_t, torch.ones(64, 7, dtype=torch.bool), reward, done, 0.97,
                     double=double)  # fmt: skip
    torch.testing.assert_close(got, plain)
    # A mask of shape (n,) broadcasts to every row.
    got = dqn_target(q_o, q_t, np.ones(7, dtype=bool), reward, done, 0.97, double=double)
    torch.testing.assert_close(got, plain)


def test_n_step_discount_per_row_and_leading_batch_dims() -> None:
    # 3-step returns: row 0 ran all 3 steps (gamma**3), row 1 ended after 2 (terminated).
    gamma = 0.5
    rewards = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 4.0, 0.0])]
    n_step_reward = torch.tensor(
        [sum(gamma**k * r[k] for k in range(3)) for r in rewards]
    )  # 1.75 and 4.0
    discount = torch.tensor([gamma**3, gamma**2])
    q = torch.tensor([[2.0, 8.0], [6.0, 1.0]])
    mask = torch.tensor([[T, F], [T, T]])
    target = dqn_target(q, q, mask, n_step_reward, torch.tensor([F, T]), discount)
    torch.testing.assert_close(target, torch.tensor([1.75 + 0.125 * 2.0, 4.0]))
    # Leading batch dims [T, B, n]: row by row the same as flat.
    g = torch.Generator().manual_seed(1)
    q3 = torch.randn(4, 5, 6, generator=g)
    m3 = torch.rand(4, 5, 6, generator=g) < 0.6
    m3[..., 0] = True
    r3, d3 = torch.randn(4, 5, generator=g), torch.zeros(4, 5, dtype=torch.bool)
    flat = dqn_target(q3.reshape(20, 6), q3.reshape(20, 6), m3.reshape(20, 6), r3.reshape(20),
                      d3.reshape(20), 0.9)  # fmt: skip
    torch.testing.assert_close(dqn_target(q3, q3, m3, r3, d3, 0.9), flat.reshape(4, 5))


def test_target_is_detached_and_keeps_the_promoted_dtype() -> None:
    q_t = Q_TARGET.clone().requires_grad_()
    target = dqn_target(Q_ONLINE, q_t, MASK, REWARD, NOT_DONE, 0.9)
    assert not target.requires_grad
    half = dqn_target(Q_ONLINE.half(), Q_TARGET.half(), MASK, REWARD.half(), NOT_DONE, 0.9)
    assert half.dtype == torch.float16
    mixed = dqn_target(Q_ONLINE, Q_TARGET, MASK, REWARD.double(), NOT_DONE, 0.9)
    assert mixed.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reward": torch.zeros(2, 1)}, r"reward of shape \(2, 1\) does not broadcast to the batch "
         r"shape \(2,\) of q_next_target \(2, 3\)"),
        ({"reward": torch.zeros(2, dtype=torch.int64)}, "reward must be a floating-point tensor"),
        ({"terminated": torch.zeros(3, dtype=torch.bool)}, r"terminated of shape \(3,\)"),
        ({"terminated": torch.tensor([0.0, 0.5])}, "terminated of dtype torch.float32 must hold "
         "only 0 and 1"),
        ({"next_mask": torch.ones(3, 3, dtype=torch.bool)}, r"next_mask of shape \(3, 3\) does "
         r"not broadcast"),
        ({"next_mask": torch.ones(2, 3)}, "next_mask must be a bool tensor"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\], got 1.5"),
        ({"gamma": torch.tensor([0.9, -0.1])}, r"gamma tensor values must be in \[0, 1\]"),
        ({"gamma": torch.tensor([0.9, 0.9, 0.9])}, r"gamma of shape \(3,\) does not broadcast"),
        ({"gamma": "0.9"}, "gamma must be a float or a tensor, got str"),
        ({"q_next_online": torch.zeros(2, 4)}, r"q_next_online has shape \(2, 4\) but "
         r"q_next_target has \(2, 3\)"),
        ({"q_next_online": None}, "double DQN needs q_next_online"),
        ({"q_next_target": torch.zeros(2, 3, dtype=torch.int64)}, "q_next_target must be a "
         "floating-point tensor, got torch.int64"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "q_next_online": Q_ONLINE, "q_next_target": Q_TARGET, "next_mask": MASK,
        "reward": REWARD, "terminated": NOT_DONE, "gamma": 0.9,
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as err:
        dqn_target(**args)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_masked_argmax_ignores_invalid_values() -> None:
    q = torch.tensor([[INF, 1.0, 2.0, NAN], [5.0, 5.0, 1.0, 0.0]])
    mask = torch.tensor([[F, T, T, F], [F, T, T, T]])
    assert masked_argmax(q, mask).tolist() == [2, 1]


# ------------------------------------------------------------------ epsilon-greedy


def test_epsilon_zero_is_the_masked_argmax_and_one_never_picks_an_invalid_action() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2000, 9, generator=g)
    mask = torch.rand(2000, 9, generator=g) < 0.3
    mask[torch.arange(2000), torch.randint(0, 9, (2000,), generator=g)] = True
    q[~mask] = 1e6  # an invalid action would win any unmasked argmax
    greedy = masked_epsilon_greedy(q, mask, 0.0, g)
    want = torch.where(mask, q, torch.tensor(-INF)).argmax(-1)
    assert torch.equal(greedy, want)
    for eps in (0.5, 1.0):
        actions = masked_epsilon_greedy(q, mask, eps, g)
        assert bool(mask.gather(1, actions[:, None]).all()), eps


def test_one_uniform_per_row_picks_the_counted_valid_action_by_hand() -> None:
    # Valid actions 1, 3, 4 (k = 3) and epsilon 0.5: u = 0.1 explores with
    # u / epsilon = 0.2 -> the floor(0.6) = 0th valid action, 1; u = 0.3 -> 0.6 ->
    # floor(1.8) = 1st, 3; u = 0.49 -> 0.98 -> floor(2.94) = 2nd, 4; u = 0.5 and
    # u = 0.9 act greedily (the valid argmax, 3).
    from maskrl.agents.dqn import _uniform_valid_action

    mask = torch.tensor([F, T, F, T, T, F]).expand(5, 6)
    u = torch.tensor([0.1, 0.3, 0.49, 0.5, 0.9])
    assert _uniform_valid_action(u, mask, 0.5)[:3].tolist() == [1, 3, 4]
    # u just below epsilon (u / epsilon rounds up to 1 in float32) still gives the last one.
    below = torch.tensor([torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)).item()])
    assert _uniform_valid_action(below, mask[:1], 0.5).tolist() == [4]

    q = torch.tensor([9.0, 1.0, 9.0, 5.0, 2.0, 9.0]).expand(5, 6)
    g = torch.Generator().manual_seed(0)
    draws = torch.rand(5, generator=torch.Generator().manual_seed(0))
    got = masked_epsilon_greedy(q, mask, 0.5, g)
    want = torch.where(draws < 0.5, _uniform_valid_action(draws, mask, 0.5), torch.tensor(3))
    assert torch.equal(got, want)
    assert torch.equal(masked_epsilon_greedy(q, mask, 0.5, torch.Generator().manual_seed(0)),
                       got)  # fmt: skip


def test_exploration_is_uniform_over_the_valid_actions() -> None:
    # 30,000 rows with the same mask (valid: 1, 3, 4) and epsilon 1: each valid
    # action about 10,000 times, the invalid ones never. Pearson's chi-square with
    # 2 degrees of freedom is below 13.8 with probability 0.999 under uniformity
    # (the seed is fixed, so the test is deterministic).
    g = torch.Generator().manual_seed(123)
    n = 30_000
    mask = torch.tensor([F, T, F, T, T, F])
    q = torch.zeros(n, 6)
    q[:, 0] = 10.0  # greedy would be invalid action 0
    counts = torch.bincount(masked_epsilon_greedy(q, mask, 1.0, g), minlength=6)
    assert counts[~mask].sum().item() == 0
    expected = n / 3
    chi2 = (((counts[mask].double() - expected) ** 2) / expected).sum().item()
    assert chi2 < 13.8, counts.tolist()
    # epsilon 0.3 with a valid greedy action 4: P(4) = 0.7 + 0.3 / 3 = 0.8, P(1) = P(3) = 0.1.
    q[:, 4] = 5.0
    counts = torch.bincount(masked_epsilon_greedy(q, mask, 0.3, g), minlength=6).double() / n
    np.testing.assert_allclose(counts[[1, 3, 4]].numpy(), [0.1, 0.1, 0.8], atol=0.01)


def test_generator_determinism_and_the_global_generator_is_untouched() -> None:
    q = torch.randn(500, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.rand(500, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[:, 2] = True
    before = torch.random.get_rng_state()
    a = masked_epsilon_greedy(q, mask, 0.4, torch.Generator().manual_seed(7))
    b = masked_epsilon_greedy(q, mask, 0.4, torch.Generator().manual_seed(7))
    c = masked_epsilon_greedy(q, mask, 0.4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), before)
    # The generator advances by the same amount whatever epsilon: a later draw
    # does not depend on the epsilon used before it.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    masked_epsilon_greedy(q, mask, 0.0, g1)
    masked_epsilon_greedy(q, mask, 1.0, g2)
    assert torch.equal(masked_epsilon_greedy(q, mask, 0.5, g1),
                       masked_epsilon_greedy(q, mask, 0.5, g2))  # fmt: skip


def test_epsilon_greedy_bad_inputs() -> None:
    q, g = torch.zeros(3, 4), torch.Generator().manual_seed(0)
    mask = torch.tensor([[T, F, F, F], [F, F, F, F], [T, T, T, T]])
    with pytest.raises(ValueError, match=r"action mask has no valid action in row\(s\) \[1\]"):
        masked_epsilon_greedy(q, mask, 0.1, g)
    ok = torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\], got 1.5"):
        masked_epsilon_greedy(q, ok, 1.5, g)
    with pytest.raises(ValueError, match="needs an explicit torch.Generator"):
        masked_epsilon_greedy(q, ok, 0.1, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) does not broadcast"):
        masked_epsilon_greedy(q, torch.ones(2, 4, dtype=torch.bool), 0.1, g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_needs_a_cuda_generator() -> None:
    cpu = dqn_target(Q_ONLINE, Q_TARGET, MASK, REWARD, NOT_DONE, 0.9)
    dev = [t.cuda() for t in (Q_ONLINE, Q_TARGET, MASK, REWARD, NOT_DONE)]
    torch.testing.assert_close(dqn_target(*dev, 0.9).cpu(), cpu)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        dqn_target(dev[0], dev[1], torch.tensor([[T, F, T], [F, F, F]]).cuda(), dev[3], dev[4], 0.9)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(4096, 6, device="cuda")
    mask = torch.rand(4096, 6, device="cuda") < 0.5
    mask[:, 5] = True
    actions = masked_epsilon_greedy(q, mask, 0.5, g)
    assert actions.device.type == "cuda" and bool(mask.gather(1, actions[:, None]).all())
    with pytest.raises(ValueError, match="the generator is on cpu but q on cuda"):
        masked_epsilon_greedy(q, mask, 0.5, torch.Generator())


def test_docstring_examples_run() -> None:
    import doctest

    import maskrl.agents.dqn

    result = doctest.testmod(maskrl.agents.dqn, extraglobs={"torch": torch})
    assert result.attempted >= 3 and result.failed == 0


def test_the_unchecked_helpers_compute_what_the_public_functions_do() -> None:
    from maskrl.agents.dqn import _dqn_target_unchecked, _masked_epsilon_greedy_unchecked

    g = torch.Generator().manual_seed(0)
    q_on, q_t = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g)
    mask = torch.rand(64, 5, generator=g) < 0.6
    mask[:, 3] = True
    r, done = torch.randn(64, generator=g), torch.rand(64, generator=g) < 0.3
    for double in (True, False):
        want = dqn_target(q_on, q_t, mask, r, done, 0.9, double=double)
        got = _dqn_target_unchecked(q_on if double else None, q_t, mask, r, done, 0.9)
        assert torch.equal(want, got)
    for eps in (0.0, 0.4, 1.0):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        want = masked_epsilon_greedy(q_on, mask, eps, g1)
        assert torch.equal(want, _masked_epsilon_greedy_unchecked(q_on, mask, eps, g2))
        assert torch.equal(g1.get_state(), g2.get_state())  # the same draws
