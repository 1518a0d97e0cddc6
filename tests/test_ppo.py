"""Masked PPO: GAE against hand-computed numbers, masks replayed in the update,
an env where masking alone decides the outcome, a short learning test."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from maskrl.agents import PPO, PPOConfig, compute_gae
from maskrl.agents.rollout import collect_rollout, flatten_obs, index_obs
from maskrl.distributions import MaskedPolicyHead


class TargetEnv(gym.Env):
    """Each step shows a random target action (one-hot); reward 1 for taking it.

    With ``masked=True`` the mask allows the target only, so any policy that
    respects masks is perfect; with ``masked=False`` every action is valid.
    ``reveal=False`` hides the target from the observation (zeros), so only the
    mask can tell an agent which action is right.
    """

    def __init__(
        self, n: int = 6, length: int = 8, masked: bool = True, reveal: bool = True
    ) -> None:
        self.n, self.length, self.masked, self.reveal = n, length, masked, reveal
        self.observation_space = spaces.Box(0.0, 1.0, (n,), np.float32)
        self.action_space = spaces.Discrete(n)

    def _obs_info(self) -> tuple[np.ndarray, dict]:
        obs = np.zeros(self.n, np.float32)
        if self.reveal:
            obs[self.target] = 1.0
        mask = np.zeros(self.n, bool) if self.masked else np.ones(self.n, bool)
        mask[self.target] = True
        return obs, {"action_mask": mask}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.target = int(self.np_random.integers(self.n))
        return self._obs_info()

    def step(self, action):
        reward = float(int(action) == self.target)
        self.t += 1
        self.target = int(self.np_random.integers(self.n))
        obs, info = self._obs_info()
        return obs, reward, False, self.t >= self.length, info


def make_envs(num_envs: int = 4, **kw) -> SyncVectorEnv:
    return SyncVectorEnv(
        [lambda: TargetEnv(**kw) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP
    )


# ---------------------------------------------------------------------------- GAE


def test_gae_hand_computed_with_termination_and_truncation():
    # One env, 5 steps, constant value 1.0 everywhere, gamma 0.5, lambda 0.5.
    # Episode A: steps 0-1, terminated at step 1. Episode B: steps 2-3, truncated
    # at step 3 with V(final_obs) = 4.0. Episode C: step 4, still running; the
    # observation after it has value 2.0.
    g, lam = 0.5, 0.5
    r = torch.tensor([[1.0], [2.0], [0.0], [3.0], [1.0]])
    v = torch.ones(5, 1)
    term = torch.tensor([[0.0], [1.0], [0.0], [0.0], [0.0]])
    trunc = torch.tensor([[0.0], [0.0], [0.0], [1.0], [0.0]])
    final_v = torch.tensor([[0.0], [0.0], [0.0], [4.0], [0.0]])
    next_v = torch.tensor([2.0])
    adv, ret = compute_gae(r, v, term, trunc, final_v, next_v, g, lam)
    # By hand:
    # t=4: delta = 1 + 0.5*2 - 1 = 1                      -> A4 = 1
    # t=3: truncated: delta = 3 + 0.5*4 - 1 = 4          -> A3 = 4 (chain cut)
    # t=2: delta = 0 + 0.5*1 - 1 = -0.5                   -> A2 = -0.5 + 0.25*4 = 0.5
    # t=1: terminated: delta = 2 - 1 = 1                  -> A1 = 1
    # t=0: delta = 1 + 0.5*1 - 1 = 0.5                    -> A0 = 0.5 + 0.25*1 = 0.75
    expected = torch.tensor([[0.75], [1.0], [0.5], [4.0], [1.0]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + 1.0)


def test_gae_lambda_one_is_discounted_return_minus_value():
    # With lambda = 1 and no episode end, A_t = sum_k gamma^k r_{t+k} + gamma^(T-t) V_T - V_t.
    rng = np.random.default_rng(0)
    T, g = 7, 0.9
    r = torch.tensor(rng.normal(size=(T, 3)), dtype=torch.float32)
    v = torch.tensor(rng.normal(size=(T, 3)), dtype=torch.float32)
    nv = torch.tensor(rng.normal(size=3), dtype=torch.float32)
    z = torch.zeros(T, 3)
    adv, _ = compute_gae(r, v, z, z, z, nv, g, 1.0)
    for t in range(T):
        disc = sum(g**k * r[t + k] for k in range(T - t)) + g ** (T - t) * nv
        torch.testing.assert_close(adv[t], disc - v[t], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------- masked policy head


def test_policy_head_matches_masked_categorical():
    from maskrl import MaskedCategorical

    torch.manual_seed(0)
    logits = torch.randn(64, 6) * 3
    mask = torch.rand(64, 6) > 0.5
    mask[torch.arange(64), torch.randint(0, 6, (64,))] = True
    head = MaskedPolicyHead([6])
    action, logp = head.sample(logits, mask)
    assert mask[torch.arange(64), action].all()
    dist = MaskedCategorical(logits=logits, mask=mask)
    lp2, ent2 = head.evaluate(logits, mask, action)
    torch.testing.assert_close(logp, dist.log_prob(action))
    torch.testing.assert_close(lp2, dist.log_prob(action))
    torch.testing.assert_close(ent2, dist.entropy())
    det, _ = head.sample(logits, mask, deterministic=True)
    torch.testing.assert_close(det, torch.where(mask, logits, -1e9).argmax(-1))


def test_policy_head_multidiscrete_and_zero_grad_at_masked_logits():
    torch.manual_seed(1)
    nvec = [3, 4]
    logits = (torch.randn(16, 7) * 2).requires_grad_()
    mask = torch.ones(16, 7, dtype=torch.bool)
    mask[:, 0] = False  # first dimension: action 0 invalid
    mask[:, 3 + 2] = False  # second dimension: action 2 invalid
    head = MaskedPolicyHead(nvec)
    action, _ = head.sample(logits, mask)
    assert action.shape == (16, 2)
    assert (action[:, 0] != 0).all() and (action[:, 1] != 2).all()
    logp, ent = head.evaluate(logits, mask, action)
    (logp.sum() + ent.sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[:, 0] == 0).all() and (logits.grad[:, 5] == 0).all()
    # Entropy of uniform logits is the sum of log(#valid) per dimension.
    u_logp, u_ent = head.evaluate(torch.zeros(1, 7), mask[:1], action[:1])
    torch.testing.assert_close(u_ent, torch.tensor([np.log(2) + np.log(3)], dtype=torch.float32))


# ------------------------------------------------------------------- the trainer


def test_masking_alone_decides_the_outcome():
    """Target hidden from the observation: only the mask tells the right action."""
    cfg = PPOConfig(num_envs=4, num_steps=32, num_minibatches=2, seed=3, device="cpu")
    agent = PPO(make_envs(4, reveal=False, masked=True), cfg)
    buf, state = agent._ensure_rollout_state()
    collect_rollout(agent.envs, buf, state, agent._act, agent._value, agent.episode_stats)
    assert buf.rewards.mean().item() == 1.0  # untrained, yet perfect

    unmasked = PPO(make_envs(4, reveal=False, masked=False), cfg)
    unmasked.net.load_state_dict(agent.net.state_dict())  # the very same network
    buf2, state2 = unmasked._ensure_rollout_state()
    collect_rollout(
        unmasked.envs, buf2, state2, unmasked._act, unmasked._value, unmasked.episode_stats
    )
    # Without the mask it is a near-uniform guess among 6 actions.
    assert buf2.rewards.mean().item() < 0.35


def test_update_replays_the_sampling_masks():
    cfg = PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, seed=0, device="cpu")
    agent = PPO(make_envs(4, masked=True, reveal=True), cfg)
    # Make the masks vary: half the actions valid at random.
    buf, state = agent._ensure_rollout_state()
    collect_rollout(agent.envs, buf, state, agent._act, agent._value, agent.episode_stats)
    T, N = cfg.num_steps, cfg.num_envs
    obs = flatten_obs(index_obs(buf.obs, slice(0, T)), T * N)
    with torch.no_grad():
        logits, values = agent.net(obs)
        logp, _ = agent.head.evaluate(
            logits, buf.masks[:T].reshape(T * N, -1), buf.actions.reshape(-1)
        )
    torch.testing.assert_close(logp, buf.logprobs.reshape(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, buf.values.reshape(-1), rtol=1e-5, atol=1e-5)
    # The stored masks are the env's: exactly one valid action (the target) each step.
    assert (buf.masks[:T].sum(-1) == 1).all()
    # A first update starts at ratio 1: approx-KL of the first minibatch is ~0.
    metrics = agent.update(buf)
    assert metrics["approx_kl"] < 1e-3


def test_truncation_values_are_recorded():
    cfg = PPOConfig(num_envs=2, num_steps=20, num_minibatches=1, seed=0, device="cpu")
    agent = PPO(make_envs(2, length=8), cfg)
    buf, state = agent._ensure_rollout_state()
    collect_rollout(agent.envs, buf, state, agent._act, agent._value, agent.episode_stats)
    trunc_steps = buf.truncated.nonzero()[:, 0].unique().tolist()
    assert trunc_steps == [7, 15]  # episodes of 8 steps, cut by the time limit
    assert (buf.final_values[buf.truncated == 1] != 0).all()
    assert (buf.final_values[buf.truncated == 0] == 0).all()
    assert (buf.terminated == 0).all()
    assert agent.episode_stats.lengths == [8, 8, 8, 8]


def test_short_seeded_learning():
    """The target is shown but not masked: PPO must learn to read it (a few seconds)."""
    cfg = PPOConfig(
        num_envs=8,
        num_steps=32,
        num_minibatches=4,
        num_epochs=4,
        learning_rate=3e-3,
        seed=1,
        device="cpu",
    )
    agent = PPO(make_envs(8, masked=False, reveal=True), cfg)
    history: list[float] = []
    agent.learn(16_384, callback=lambda a, m: history.append(m["invalid_actions"]))
    returns = agent.episode_stats.returns
    first, last = np.mean(returns[:20]), np.mean(returns[-20:])
    assert first < 3.0  # 8 steps x 1/6 at the start
    assert last > 6.5, (first, last)  # near the maximum of 8
    assert sum(history) == 0


def test_predict_requires_and_respects_masks():
    cfg = PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu")
    agent = PPO(make_envs(2), cfg)
    obs = np.eye(6, dtype=np.float32)
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((6, 6)) < 0.3
        mask[np.arange(6), rng.integers(0, 6, 6)] = True
        act = agent.predict(obs, mask)
        assert mask[np.arange(6), act].all()
    single = agent.predict(obs[0], np.array([0, 0, 1, 0, 0, 0], bool))
    assert int(single) == 2
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        agent.predict(obs[:2], np.array([[1, 0, 0, 0, 0, 0], [0] * 6], bool))
    with pytest.raises(ValueError, match="shape"):
        agent.predict(obs, np.ones((6, 5), bool))


def test_empty_mask_from_env_names_the_env_index():
    class Broken(TargetEnv):
        def _obs_info(self):
            obs, info = super()._obs_info()
            if getattr(self, "broken", False):
                info["action_mask"] = np.zeros(self.n, bool)
            return obs, info

    def make(i):
        def f():
            e = Broken()
            e.broken = i == 2
            return e

        return f

    envs = SyncVectorEnv([make(i) for i in range(3)], autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match=r"env index\(es\) \[2\]"):
        PPO(envs, PPOConfig(num_envs=3, num_steps=8, num_minibatches=1, device="cpu")).learn(24)


def test_config_rejects_a_batch_that_does_not_divide():
    with pytest.raises(
        ValueError, match=r"num_minibatches=3 \(--num-minibatches\) does not divide"
    ):
        PPOConfig(num_envs=8, num_steps=128, num_minibatches=3).validate()


def test_save_load_roundtrip_same_actions(tmp_path):
    cfg = PPOConfig(num_envs=2, num_steps=16, num_minibatches=1, device="cpu", seed=5)
    agent = PPO(make_envs(2), cfg)
    agent.learn(64)
    agent.save(tmp_path / "a.pt")
    loaded = PPO.load(tmp_path / "a.pt", device="cpu")
    assert loaded.global_step == agent.global_step == 64
    obs = np.random.default_rng(0).random((32, 6)).astype(np.float32)
    mask = np.ones((32, 6), bool)
    np.testing.assert_array_equal(
        agent.predict(obs, mask, deterministic=True), loaded.predict(obs, mask, deterministic=True)
    )
    for p, q in zip(agent.net.parameters(), loaded.net.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_load_refuses_an_env_with_other_spaces_naming_both(tmp_path):
    from maskrl.envs import make_vec

    cfg = PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu")
    agent = PPO("maskrl/MinAtar-Breakout-v0", cfg)
    agent.save(tmp_path / "b.pt")
    agent.envs.close()
    # The same game loads; another observation shape (Seaquest: 10 channels) or another
    # action count (Breakout padded to 18 actions) is one ValueError naming both spaces.
    PPO.load(tmp_path / "b.pt", device="cpu", env="maskrl/MinAtar-Breakout-v0").envs.close()
    with pytest.raises(ValueError, match=r"observation space Box.*\(4, 10, 10\).*\(10, 10, 10\)"):
        PPO.load(tmp_path / "b.pt", device="cpu", env="maskrl/MinAtar-Seaquest-v0")
    envs = make_vec("maskrl/MinAtar-Breakout-v0", 2, seed=0, num_actions=18)
    with pytest.raises(ValueError, match=r"action space Discrete\(6\); .* Discrete\(18\)"):
        PPO.load(tmp_path / "b.pt", device="cpu", env=envs)
    envs.close()


def test_policy_head_sample_frequencies_match_renormalised_probs():
    torch.manual_seed(2)
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 9.0, 1.0]])
    mask = torch.tensor([[True, True, True, False, False, True]])  # the largest logit masked
    head = MaskedPolicyHead([6])
    n = 40_000
    actions, _ = head.sample(logits.expand(n, 6), mask.expand(n, 6))
    freq = torch.bincount(actions, minlength=6).float() / n
    p = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)[0]
    assert freq[3] == 0 and freq[4] == 0
    # Within 5 standard errors of the renormalised probabilities.
    se = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)


def test_defaults_are_the_fast_preset_and_reference_is_separate():
    from maskrl.agents.config import PRESETS

    cfg = PPOConfig()
    for k, v in PRESETS["fast"].items():
        assert getattr(cfg, k) == v, k
    ref = PPOConfig(**PRESETS["reference"])
    ref.validate()
    assert ref != cfg
    # The derived minibatch size follows the preset's shape.
    assert ref.minibatch_size == ref.num_envs * ref.num_steps // ref.num_minibatches


def test_the_breakout_preset_is_minatar_with_five_changes():
    # Its learning is measured in docs/actor_mimic.md (10M steps a run, too long
    # for a test); here its values, which those runs used, are pinned.
    from maskrl.agents.config import PRESETS

    base, breakout = PRESETS["minatar"], PRESETS["minatar-breakout"]
    changed = {k: v for k, v in breakout.items() if base.get(k) != v}
    assert changed == {
        "num_steps": 32,
        "gamma": 0.995,
        "ent_coef": 0.05,
        "ent_coef_final": 0.0,
        "learning_rate": 1e-3,
    }
    assert set(base) <= set(breakout)
    cfg = PPOConfig(**breakout)
    cfg.validate()
    # 64 envs x 32 steps in 4 minibatches: 512 samples each, half the minatar preset's.
    assert cfg.minibatch_size == 512 == PPOConfig(**base).minibatch_size // 2


def test_knapsack_uses_the_set_network_and_padding_never_matters():
    from maskrl.networks import SetActorCritic

    cfg = PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, device="cpu", seed=0)
    agent = PPO("maskrl/Knapsack-v0", cfg)
    assert isinstance(agent.net, SetActorCritic)
    invalid: list[float] = []
    agent.learn(128, callback=lambda a, m: invalid.append(m["invalid_actions"]))
    assert sum(invalid) == 0
    # Garbage in padded / picked rows changes neither the value nor the logits of live items.
    obs, info = agent.envs.reset(seed=3)
    t = {k: torch.as_tensor(v) for k, v in obs.items()}
    with torch.no_grad():
        logits, value = agent.net(t)
        live = t["item_mask"].bool()
        noisy = dict(t)
        noisy["item_features"] = torch.where(live.unsqueeze(-1), t["item_features"], 1e6)
        logits2, value2 = agent.net(noisy)
    torch.testing.assert_close(value, value2)
    torch.testing.assert_close(logits[live], logits2[live])


def test_multigame_agent_keeps_each_games_mask():
    from maskrl.networks import MultiGameActorCritic

    ids = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Seaquest-v0"]
    cfg = PPOConfig(num_envs=4, num_steps=32, num_minibatches=2, device="cpu", seed=0)
    agent = PPO(ids, cfg)
    assert isinstance(agent.net, MultiGameActorCritic)
    buf, state = agent._ensure_rollout_state()
    collect_rollout(agent.envs, buf, state, agent._act, agent._value, agent.episode_stats)
    game = buf.obs["game_id"][:-1]  # [T, N]
    actions = buf.actions
    # Breakout (game 0) has the minimal set {noop, left, right}: never up/down/fire.
    assert set(actions[game == 0].unique().tolist()) <= {0, 1, 3}
    assert (buf.masks[:-1][game == 0].sum(-1) == 3).all()
    assert (buf.masks[:-1][game == 1].sum(-1) == 6).all()


def test_same_seed_same_initial_network_and_actions():
    cfg = PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu", seed=11)
    a, b = PPO(make_envs(2), cfg), PPO(make_envs(2), cfg)
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    a.learn(32)
    b.learn(32)
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_invalid_action_count_uses_per_dimension_offsets():
    from maskrl.agents.rollout import RolloutBuffer

    buf = RolloutBuffer(spaces.Box(0, 1, (2,)), 7, (2,), 2, 1, torch.device("cpu"), nvec=[3, 4])
    buf.masks[:] = True
    buf.masks[:, 0, 3 + 1] = False  # second dimension: action 1 invalid
    buf.actions[0, 0] = torch.tensor([1, 2])  # valid: dim-0 action 1, dim-1 action 2
    buf.actions[1, 0] = torch.tensor([2, 1])  # invalid in the second dimension
    assert buf.count_invalid_actions() == 1


class MultiTargetEnv(gym.Env):
    """MultiDiscrete([3, 4]): per dimension, only the target action is valid; reward 1 per hit."""

    def __init__(self) -> None:
        self.nvec = np.array([3, 4])
        self.observation_space = spaces.Box(0.0, 1.0, (7,), np.float32)
        self.action_space = spaces.MultiDiscrete(self.nvec)

    def _obs_info(self):
        mask = np.zeros(7, bool)
        mask[self.target[0]] = True
        mask[3 + self.target[1]] = True
        return mask.astype(np.float32), {"action_mask": mask}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.target = self.np_random.integers(0, self.nvec)
        return self._obs_info()

    def step(self, action):
        reward = float((np.asarray(action) == self.target).sum())
        self.t += 1
        self.target = self.np_random.integers(0, self.nvec)
        obs, info = self._obs_info()
        return obs, reward, False, self.t >= 5, info


def test_multidiscrete_rollouts_follow_per_dimension_masks():
    envs = SyncVectorEnv([MultiTargetEnv for _ in range(3)], autoreset_mode=AutoresetMode.SAME_STEP)
    cfg = PPOConfig(num_envs=3, num_steps=10, num_minibatches=1, device="cpu", seed=0)
    agent = PPO(envs, cfg)
    invalid: list[float] = []
    agent.learn(60, callback=lambda a, m: invalid.append(m["invalid_actions"]))
    assert sum(invalid) == 0
    assert agent._buffer.actions.shape == (10, 3, 2)
    assert agent._buffer.rewards.mean().item() == 2.0  # both dimensions always hit
    # An empty dimension is an error naming the row and the dimension.
    mask = np.ones((2, 7), bool)
    mask[1, 3:] = False
    with pytest.raises(ValueError, match=r"\(row\(s\), dimension\) \[\(1, 1\)\]"):
        agent.predict(np.zeros((2, 7), np.float32), mask)


def test_trainer_rejects_next_step_autoreset_and_shifted_action_spaces():
    nxt = SyncVectorEnv([TargetEnv], autoreset_mode=AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match="same-step autoreset"):
        PPO(nxt, PPOConfig(num_envs=1, num_steps=8, num_minibatches=1, device="cpu"))

    class Shifted(TargetEnv):
        def __init__(self):
            super().__init__()
            self.action_space = spaces.Discrete(6, start=1)

    shifted = SyncVectorEnv([Shifted], autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="does not start at 0"):
        PPO(shifted, PPOConfig(num_envs=1, num_steps=8, num_minibatches=1, device="cpu"))


def test_evaluate_plays_a_multigame_agent_on_some_of_its_games_under_their_own_ids():
    from maskrl.agents import evaluate

    ids = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Asterix-v0"]
    agent = PPO(ids, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu"))

    class Watch:
        """The agent, recording the game ids and screens it is shown."""

        def __init__(self) -> None:
            self.env_ids, self.observation_space = agent.env_ids, agent.observation_space
            self.action_space, self.seen, self.screens = agent.action_space, set(), []

        def predict(self, obs, mask, deterministic=False):
            self.seen.update(obs["game_id"].tolist())
            self.screens.append(obs["obs"].copy())
            return agent.predict(obs, mask, deterministic=deterministic)

    w = Watch()
    res = evaluate(w, [ids[1]], episodes=3, seed=5)
    assert res["env_id"] == ids[1] and res["episodes"] == 3
    assert w.seen == {1}  # Asterix keeps the game id it was trained under
    w = Watch()
    res = evaluate(w, [ids[0]], episodes=2, seed=5)
    assert w.seen == {0} and res["episodes"] == 2
    # Breakout's 4 channels, padded to Asterix's layout (the agent's input) with zeros.
    assert w.screens[0].shape[1] == agent.observation_space["obs"].shape[0]
    assert all((s[:, 4:] == 0).all() for s in w.screens)
    w = Watch()
    res = evaluate(w, list(reversed(ids)), episodes=2, seed=5)  # any order, keyed by id
    assert res["env_ids"] == list(reversed(ids)) and w.seen == {0, 1}
    assert all(res["per_game"][e]["episodes"] == 2 for e in ids)
    with pytest.raises(ValueError, match="or some of them"):
        evaluate(agent, [ids[0], "maskrl/MinAtar-Seaquest-v0"], episodes=1)
    with pytest.raises(ValueError, match="or some of them"):
        evaluate(agent, [ids[0], ids[0]], episodes=1)
    single = PPO(
        "maskrl/MinAtar-Breakout-v0",
        PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu"),
    )
    with pytest.raises(ValueError, match="observation space"):
        evaluate(single, "maskrl/MinAtar-Seaquest-v0", episodes=1)  # 10 channels, not 4


def test_resolve_device_rejects_unknown_devices():
    from maskrl.agents import resolve_device

    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:3")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
    with pytest.raises(TypeError, match="device must be a str"):
        resolve_device(0)  # type: ignore[arg-type]


def test_one_device_rule_for_the_envs_and_the_trainers():
    import maskrl.device
    from maskrl.agents import resolve_device
    from maskrl.envs.torch_minatar import vector

    assert resolve_device is maskrl.device.resolve_device is vector.resolve_device


def test_bad_arguments_to_predict_load_and_evaluate_are_named(tmp_path):
    from maskrl.agents import evaluate, load_policy

    BREAKOUT = "maskrl/MinAtar-Breakout-v0"

    agent = PPO(BREAKOUT, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu"))
    agent.save(tmp_path / "c.pt")
    agent.envs.close()
    policy = load_policy(tmp_path / "c.pt", device="cpu")
    obs, mask = np.zeros((4, 10, 10), np.float32), np.ones(6, bool)
    bad = np.zeros((3, 4, 10, 10), np.float32)
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values \(batch row\(s\) \[1\]\)"):
        policy.predict(bad, np.ones((3, 6), bool))
    with pytest.raises(ValueError, match="deterministic must be True or False"):
        policy.predict(obs, mask, deterministic="no")
    for seed in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            load_policy(tmp_path / "c.pt", device="cpu", seed=seed)
    for kwargs, name in (
        ({"episodes": 2.5}, "episodes"),
        ({"episodes": "3"}, "episodes"),
        ({"seed": -3}, "seed"),
        ({"max_steps": 0}, "max_steps"),
        ({"num_envs": 0}, "num_envs"),
    ):
        with pytest.raises(ValueError, match=name):
            evaluate(policy, BREAKOUT, **{"episodes": 1, **kwargs})
    ids = [BREAKOUT, "maskrl/MinAtar-Asterix-v0"]
    with pytest.raises(ValueError, match="num_envs=1 is fewer than the 2 games"):
        evaluate(policy, ids, 1, num_envs=1)
