"""Float32 against int8 (:func:`maskrl.quant.convert_int8`): size and CPU latency.

For each network -- the MinAtar actor-critic on Breakout, and the multi-game
actor-critic over the five MinAtar games (CNN encoder over the padded 10
channels, and the token encoder) -- the script

1. builds the float network, prepares it for QAT (8 bits, observed ranges),
   lets the observers see real observations (random valid actions in the
   env), switches fake quantization on and converts to int8;
2. measures the serialized ``state_dict`` of the float and the int8 network
   (``torch.save`` bytes, what a checkpoint holds);
3. times a forward pass (``torch.inference_mode``) of the float and the int8
   network at batch 1 and 64 on CPU, in the same run: ``--repeats`` rounds of
   ``--calls`` calls each, the two networks interleaved round by round
   (alternating which goes first) so that a stall of a shared machine hits
   both alike; it reports the median over rounds of the time per call, and
   the median of the per-round ratios;
4. reports how often the greedy (masked) actions of the int8 network agree
   with the fake-quantized network's on the observations.

The policy heads are re-initialised with gain 1 (the spread of a trained
policy's logits; the 0.01 init gain makes all logits nearly equal, which would
make the greedy comparison meaningless). Latency does not depend on it.

Example:
    python benchmarks/quant_latency.py --repeats 21 --calls 200
    python benchmarks/quant_latency.py --threads 1
    python benchmarks/quant_latency.py --rollout-settings
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

import maskrl.quant as Q
from maskrl.init import layer_init
from maskrl.masking import masked_log_softmax
from maskrl.networks import ActorCritic, MinAtarCNN, MultiGameActorCritic
from maskrl.tokens import GridTokenEncoder

MINATAR = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]
Obs = Any


def collect(env_ids: list[str], num_envs: int, steps: int, seed: int) -> tuple[Obs, torch.Tensor]:
    """Observations and masks from random valid actions (multi-game env when several ids)."""
    from maskrl.envs import make_multigame_vec, make_vec

    envs = (
        make_vec(env_ids[0], num_envs, seed=seed)
        if len(env_ids) == 1
        else make_multigame_vec(env_ids, num_envs, seed=seed)
    )
    rng = np.random.default_rng(seed)
    obs, info = envs.reset(seed=seed)
    obs_list, masks = [], []
    for _ in range(steps):
        obs_list.append(obs)
        masks.append(info["action_mask"])
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in info["action_mask"]])
        obs, _, _, _, info = envs.step(actions)
    envs.close()
    mask = torch.as_tensor(np.concatenate(masks))
    if isinstance(obs_list[0], dict):
        return {
            "obs": torch.as_tensor(np.concatenate([o["obs"] for o in obs_list])).float(),
            "game_id": torch.as_tensor(np.concatenate([o["game_id"] for o in obs_list])),
        }, mask
    return torch.as_tensor(np.concatenate(obs_list)).float(), mask


def take(obs: Obs, n: int) -> Obs:
    return {k: v[:n] for k, v in obs.items()} if isinstance(obs, dict) else obs[:n]


def nbytes(module: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return len(buf.getvalue())


def time_pair(
    fa: Callable[[], object], fb: Callable[[], object], repeats: int, calls: int
) -> tuple[float, float, float]:
    """Median us per call of ``fa`` and ``fb`` over interleaved rounds, and the median ratio b/a."""
    for _ in range(max(calls // 4, 5)):  # warm-up (packing, caches, allocator)
        fa()
        fb()
    ta: list[float] = []
    tb: list[float] = []
    for r in range(repeats):
        order = [(fa, ta), (fb, tb)] if r % 2 == 0 else [(fb, tb), (fa, ta)]
        for f, out in order:
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            out.append((time.perf_counter() - t0) / calls * 1e6)
    ratio = statistics.median(b / a for a, b in zip(ta, tb, strict=True))
    return statistics.median(ta), statistics.median(tb), ratio


def bench_network(
    name: str,
    build: Callable[[], nn.Module],
    obs: Obs,
    mask: torch.Tensor,
    repeats: int,
    calls: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    net = build()
    head = net.get_submodule("policy_head")
    layer_init(head, std=1.0)
    float_net = build()
    float_net.load_state_dict(net.state_dict())
    float_net.eval()
    Q.prepare_qat(net)
    with torch.no_grad():
        net(obs)  # the observers see the whole batch of real observations
    net.eval()
    int8 = Q.convert_int8(net)
    with torch.inference_mode():
        fq_act = masked_log_softmax(net(obs)[0], mask).argmax(-1)
        i8_act = masked_log_softmax(int8(obs)[0], mask).argmax(-1)
    row: dict[str, Any] = {
        "network": name,
        "float_bytes": nbytes(float_net),
        "int8_bytes": nbytes(int8),
        "agree": float((fq_act == i8_act).float().mean()),
        "n_obs": int(mask.shape[0]),
    }
    with torch.inference_mode():
        for b in (1, 64):
            x = take(obs, b)
            tf, ti, ratio = time_pair(partial(float_net, x), partial(int8, x), repeats, calls)
            row[f"float_b{b}"], row[f"int8_b{b}"], row[f"ratio_b{b}"] = tf, ti, ratio
    return row


def kernel_table(repeats: int, calls: int, k: int = 1024, n: int = 128) -> None:
    """Time the int8 linear kernels torch offers on CPU against float, for one layer.

    The layer is the MinAtar network's dense layer (``k -> n``); the input is
    quantized with a fixed scale and zero point (what a trained QAT layer
    has). Each kernel is timed against float in interleaved rounds and its
    output is compared with the fake-quantized reference (``max |err|``;
    float's is the quantization error itself; ``dynamic`` picks its own input
    scale per batch, hence its larger error).
    """
    import warnings

    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    w_int = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    w_scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    w_float = w_int.float() * w_scale[:, None]
    x_scale, x_zp = 4.0 / 255, 64
    inv = float(1.0 / torch.tensor(x_scale))
    w_zp = torch.zeros(n, dtype=torch.int64)
    packed_onednn = torch.ops.onednn.qlinear_prepack(w_int, None)
    with warnings.catch_warnings():
        # quint8/qint8 tensors (needed by the quantized:: ops) are deprecated.
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(
            w_float, w_scale.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8
        )
        packed_fbgemm = torch.ops.quantized.linear_prepack(qw, bias)
    # _int_mm: signed input levels (q - 128), zero point folded into the bias.
    s_out = torch.tensor(x_scale) * w_scale
    b_int = bias - s_out * (x_zp - 128) * w_int.sum(1, dtype=torch.int32)
    w_t = w_int.t()

    def levels(x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * inv).add_(x_zp).clamp_(0, 255)

    print(
        f"\nint8 linear kernels, {k} -> {n} (median us per call; ratio to float in the same rounds)"
    )
    head = f"{'kernel':<44} {'b1':>8} {'x f32':>6} {'b64':>8} {'x f32':>6} {'max |err|':>10}"
    print(head)
    print("-" * len(head))

    def onednn(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(
            levels(x).to(torch.uint8), x_scale, x_zp, packed_onednn, w_scale, w_zp,
            bias, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip

    def fbgemm(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x, x_scale, x_zp, packed_fbgemm
        )

    def int_mm(x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(b_int, torch._int_mm((levels(x) - 128).to(torch.int8), w_t), s_out)

    def weight_only(x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm((levels(x) - x_zp) * x_scale, w_int, w_scale) + bias

    candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "float F.linear (no quantization)": lambda x: F.linear(x, w_float, bias),
        "onednn.qlinear_pointwise (convs, < 8 bits)": onednn,
        "quantized.linear_..._fp32 (FBGEMM, chosen)": fbgemm,
        "quantized.linear_dynamic (own input scale)": lambda x: torch.ops.quantized.linear_dynamic(
            x, packed_fbgemm
        ),
        "_int_mm + rescale": int_mm,
        "_weight_int8pack_mm (float activations)": weight_only,
    }
    results: dict[str, list[str]] = {}
    for b in (1, 64):
        x = torch.rand(b, k, generator=g) * 4 - 1
        ref = F.linear((levels(x) - x_zp) * x_scale, w_float, bias)
        base = partial(candidates["float F.linear (no quantization)"], x)
        for name, f in candidates.items():
            with torch.inference_mode():
                err = float((f(x) - ref).abs().max())
                _, tk, ratio = time_pair(base, partial(f, x), repeats, calls)
            results.setdefault(name, []).extend([f"{tk:>8.1f}", f"{ratio:>6.2f}"])
            if b == 64:
                results[name].append(f"{err:>10.2e}")
    for name, cells in results.items():
        print(f"{name:<44} " + " ".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=21, help="interleaved timing rounds")
    p.add_argument("--calls", type=int, default=200, help="forward calls per round")
    p.add_argument("--steps", type=int, default=32, help="env steps of 8 envs to collect")
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    p.add_argument(
        "--networks",
        nargs="+",
        default=["minatar", "multigame-cnn", "multigame-tokens"],
        choices=["minatar", "multigame-cnn", "multigame-tokens"],
    )
    p.add_argument(
        "--kernels",
        action="store_true",
        help="also time the int8 linear kernels torch offers, for the MinAtar dense layer",
    )
    p.add_argument(
        "--rollout-settings",
        action="store_true",
        help="time under the trainer's rollout settings (1 thread, aten oneDNN convs off)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # a script's own choice, not a library's
    if args.rollout_settings:
        # The trainer's settings for a rollout's small CPU forwards (one thread,
        # aten's oneDNN convolutions off), kept for the whole run.
        from maskrl.agents.trainer import cpu_rollout_mode

        stack = contextlib.ExitStack()
        stack.enter_context(cpu_rollout_mode(torch.device("cpu")))

    rows = []
    if "minatar" in args.networks:
        obs, mask = collect(["maskrl/MinAtar-Breakout-v0"], 8, args.steps, seed=0)
        c = obs.shape[1]
        rows.append(
            bench_network(
                "MinAtar Breakout (CNN)",
                lambda: ActorCritic(MinAtarCNN(c), 6),
                obs,
                mask,
                args.repeats,
                args.calls,
            )
        )
    multi = [n for n in args.networks if n.startswith("multigame")]
    if multi:
        ids = [f"maskrl/MinAtar-{g}-v0" for g in MINATAR]
        from maskrl.envs import multigame_layout

        shapes = multigame_layout(ids)
        channels = [int(s[0]) for s in shapes]
        obs, mask = collect(ids, 10, args.steps, seed=0)
        cmax = obs["obs"].shape[1]
        builders: dict[str, Callable[[], nn.Module]] = {
            "multigame-cnn": lambda: MultiGameActorCritic(MinAtarCNN(cmax), 6, len(ids)),
            "multigame-tokens": lambda: MultiGameActorCritic(
                GridTokenEncoder(channels, 10, 10), 6, len(ids)
            ),
        }
        for n in multi:
            label = f"MinAtar x{len(ids)} ({n.split('-')[1]})"
            rows.append(bench_network(label, builders[n], obs, mask, args.repeats, args.calls))

    from maskrl.quant import int8_kernels

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"aten oneDNN {'on' if torch.backends.mkldnn.enabled else 'off'}, "
        f"{args.repeats} rounds x {args.calls} calls (median us per call)"
    )
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"int8 kernels (8-bit): {int8_kernels(8)}"
    )
    head = (
        f"{'network':<26} {'float B':>9} {'int8 B':>8} {'x':>5} | {'f32 b1':>8} {'int8 b1':>8}"
        f" {'i8/f':>5} | {'f32 b64':>8} {'int8 b64':>8} {'i8/f':>5} | greedy agree"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['network']:<26} {r['float_bytes']:>9} {r['int8_bytes']:>8} "
            f"{r['float_bytes'] / r['int8_bytes']:>5.2f} | {r['float_b1']:>8.1f} "
            f"{r['int8_b1']:>8.1f} {r['ratio_b1']:>5.2f} | {r['float_b64']:>8.1f} "
            f"{r['int8_b64']:>8.1f} {r['ratio_b64']:>5.2f} | "
            f"{100 * r['agree']:.1f}% of {r['n_obs']}"
        )
    if args.kernels:
        kernel_table(args.repeats, args.calls)
    if args.rollout_settings:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
