"""Quantization-aware training and int8 policies, for every trainer.

A trainer with ``qat=True`` in its config calls :func:`prepare_for_qat` on its
network before it builds its optimizer and :func:`maskrl.quant.set_qat_step`
once per update (fake quantization starts after ``qat_start_after`` env steps,
as QuaRL does). Checkpoints record ``quant_spec(net)``, so a QAT checkpoint
loads without the user rebuilding its network (:func:`maskrl.agents.load_policy`).

:func:`int8_policy` turns any loaded policy into one that runs real int8
kernels on CPU: a QAT policy is converted as it is; a float policy is first
calibrated on observations from its own env (post-training quantization).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from maskrl.agents.policy import MaskedPolicy
from maskrl.quant import (
    check_convertible,
    convert_int8,
    prepare_qat,
    quant_spec,
    set_qat_step,
)

__all__ = ["check_qat_bits", "int8_policy", "prepare_for_qat", "state_bytes"]


def check_qat_bits(bits: int) -> None:
    """QAT bit widths are 2..8 (8 and below convert to integer kernels)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"qat_bits (--qat-bits) must be in [2, 8], got {bits}")


def prepare_for_qat(net: nn.Module, bits: int, start_after: int) -> None:
    """Put fake quantization on ``net`` unless it already has it (a loaded QAT checkpoint)."""
    check_qat_bits(bits)
    if quant_spec(net) is None:
        prepare_qat(net, num_bits=bits, start_after=start_after)


def state_bytes(net: nn.Module) -> int:
    """Bytes of ``net``'s serialized ``state_dict`` (the size of the model on disk)."""
    import io

    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getbuffer().nbytes


def _calibration_observations(policy: MaskedPolicy, steps: int, seed: int) -> list[Any]:
    """Observations the policy meets in its own env(s), for post-training calibration."""
    from maskrl.agents.rollout import obs_to_tensor
    from maskrl.envs import make_multigame_vec, make_vec

    ids = policy.env_ids
    if not ids:
        raise ValueError(
            "post-training int8 needs the policy's env to calibrate on; this checkpoint "
            "records none (train with --qat, or evaluate without --int8)"
        )
    n = 8 * len(ids)
    envs = (
        make_vec(ids[0], n, seed=seed) if len(ids) == 1 else make_multigame_vec(ids, n, seed=seed)
    )
    out = []
    try:
        obs, infos = envs.reset(seed=seed)
        for _ in range(steps):
            out.append(obs_to_tensor(obs, policy.device, policy.obs_spec))
            action = policy.predict(obs, np.asarray(infos["action_mask"]))
            obs, _, _, _, infos = envs.step(action)
    finally:
        envs.close()
    return out


def int8_policy(policy: MaskedPolicy, calibration_steps: int = 64, seed: int = 0) -> MaskedPolicy:
    """A copy of ``policy`` whose network runs int8 kernels (CPU).

    * A QAT policy (its network carries fake quantization) is converted as it is;
      its greedy actions match the fake-quantized network's.
    * A float policy is calibrated first (post-training quantization): 8-bit
      fake quantization with ranges observed over ``calibration_steps`` vector
      steps of the policy in its own env, then converted.

    Raises:
        ValueError: the network cannot be converted (the message says which
            layer and why, e.g. a QAT run stopped before its delay passed).
    """
    net = copy.deepcopy(policy.net).cpu()
    if quant_spec(net) is None:
        calib = _calibration_observations(policy, calibration_steps, seed)
        try:
            prepare_qat(net, num_bits=8, start_after=0)
        except ValueError as e:
            raise ValueError(f"this network cannot be quantized: {e}") from e
        net.train()
        with torch.no_grad():
            for obs in calib:
                net(_to_cpu(obs))
        set_qat_step(net, 0)
    problems = check_convertible(net)
    if problems:
        raise ValueError("the checkpoint cannot be converted to int8: " + "; ".join(problems))
    int8 = convert_int8(net)
    return MaskedPolicy(
        int8, policy.observation_space, policy.action_space, policy.env_ids,
        policy.network_kwargs, "cpu", 0,
    )  # fmt: skip


def _to_cpu(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: v.cpu() for k, v in obs.items()}
    return obs.cpu()
