"""FlatParameters: one flat tensor for a module's weights and one for its gradients.

The optimiser's arithmetic must not change: a network trained through the flat
views equals the same network trained with torch's Adam over its separate
parameters, and an Adam state saved per parameter continues identically.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from maskrl.agents.trainer import FlatParameters, make_adam


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 16)
        self.head = nn.Linear(16, 5)
        self.unused = nn.Linear(16, 1)  # never reached by the loss
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.head(torch.relu(self.fc(h)))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 3, 6, 6, generator=g), torch.randn(8, 5, generator=g)) for _ in range(n)
    ]


def _step_reference(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                    y: torch.Tensor, clip: float) -> torch.Tensor:  # fmt: skip
    loss = ((net(x) - y) ** 2).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in net.parameters() if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return norm


def _step_flat(net: nn.Module, flat: FlatParameters, opt: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, clip: float) -> torch.Tensor:  # fmt: skip
    loss = ((net(x) - y) ** 2).sum()
    flat.zero_grad()
    loss.backward()
    norm = flat.clip_grad_norm(clip)
    opt.step()
    return norm


def test_flattening_keeps_values_outputs_and_state_dict() -> None:
    net = _Net()
    ref = copy.deepcopy(net)
    x = _batches(1)[0][0]
    flat = FlatParameters(net)
    assert flat.param.numel() == sum(p.numel() for p in ref.parameters())
    for (k, v), w in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(v, w) and v.shape == w.shape, k
    for p in net.parameters():  # every parameter is a view of the flat tensor
        assert p.untyped_storage().data_ptr() == flat.param.untyped_storage().data_ptr()
    # Linear weights live transposed ([in, out] in memory), convolution weights as they were.
    assert net.fc.weight.stride() == (1, 16) and net.conv.weight.is_contiguous()
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=1e-6)
    # load_state_dict writes through the views.
    other = _Net()
    with torch.no_grad():
        other.fc.weight.add_(1.0)
    net.load_state_dict(other.state_dict())
    assert torch.equal(net.fc.weight, other.fc.weight)
    assert torch.equal(flat.views(flat.param.detach())[2], other.fc.weight)


@pytest.mark.parametrize("clip", [0.5, 1e9])
def test_training_through_the_flat_views_equals_adam_over_the_separate_parameters(
    clip: float,
) -> None:
    ref, net = _Net(), _Net()
    ref_opt = make_adam(ref.parameters(), 1e-2, 1e-5)
    flat = FlatParameters(net)
    opt = make_adam([flat.param], 1e-2, 1e-5)
    unused = net.unused.weight.detach().clone()
    for x, y in _batches(20):
        n_ref = _step_reference(ref, ref_opt, x, y, clip)
        n = _step_flat(net, flat, opt, x, y, clip)
        torch.testing.assert_close(n, n_ref, rtol=1e-5, atol=0)
    for (k, v), w in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-6, msg=k)
    # The layer the loss never reaches has zero gradients, so Adam leaves it alone.
    assert torch.equal(net.unused.weight, unused)
    assert not bool(net.unused.weight.grad.any())


def test_clip_grad_norm_matches_torch() -> None:
    g = torch.Generator().manual_seed(3)
    net, ref = _Net(), _Net()
    flat = FlatParameters(net)
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        grad = torch.randn(p.shape, generator=g)
        p.grad.copy_(grad)
        q.grad = grad.clone()
    want = nn.utils.clip_grad_norm_(list(ref.parameters()), 2.0)
    got = flat.clip_grad_norm(2.0)
    torch.testing.assert_close(got, want)
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    total = torch.linalg.vector_norm(flat.grad)
    assert abs(float(total) - 2.0) < 1e-5  # scaled down to the limit
    flat.zero_grad()
    assert not bool(flat.grad.any()) and not bool(net.fc.weight.grad.any())


def test_an_adam_state_saved_per_parameter_continues_identically() -> None:
    ref = _Net()
    ref_opt = make_adam(ref.parameters(), 1e-2, 1e-5)
    batches = _batches(10)
    for x, y in batches[:5]:
        _step_reference(ref, ref_opt, x, y, 1.0)
    saved_weights = copy.deepcopy(ref.state_dict())
    saved_opt = copy.deepcopy(ref_opt.state_dict())
    assert len(saved_opt["state"]) == 6  # the unused layer never had a gradient

    net = _Net()
    flat = FlatParameters(net)
    opt = make_adam([flat.param], 1e-2, 1e-5)
    net.load_state_dict(saved_weights)
    opt.load_state_dict(flat.flatten_optimizer_state(saved_opt))
    for x, y in batches[5:]:
        _step_reference(ref, ref_opt, x, y, 1.0)
        _step_flat(net, flat, opt, x, y, 1.0)
    for (k, v), w in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-6, msg=k)
    # A flat state passes through unchanged.
    state = opt.state_dict()
    assert flat.flatten_optimizer_state(state) is state


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no trainable parameter"):
        FlatParameters(nn.ReLU())
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="one dtype and device"):
        FlatParameters(mixed)
    net = _Net()
    flat = FlatParameters(net)
    other = make_adam(nn.Linear(3, 3).parameters(), 1e-3, 1e-5)
    with pytest.raises(ValueError, match="2 parameter"):
        flat.flatten_optimizer_state(other.state_dict())


@pytest.mark.parametrize("lr_change", [False, True])
def test_adam_step_is_optimizer_step_bit_for_bit(lr_change: bool) -> None:
    from maskrl.agents.trainer import adam_step

    nets = [_Net(), _Net()]
    flats = [FlatParameters(n) for n in nets]
    opts = [make_adam([f.param], 1e-2, 1e-5) for f in flats]
    for i, (x, y) in enumerate(_batches(12)):
        if lr_change and i == 6:  # an annealed learning rate is read at every step
            for o in opts:
                o.param_groups[0]["lr"] = 3e-3
        for k, (net, flat, opt) in enumerate(zip(nets, flats, opts, strict=True)):
            loss = ((net(x) - y) ** 2).sum()
            flat.zero_grad()
            loss.backward()
            flat.clip_grad_norm(1.0)
            if k == 0:
                opt.step()
            else:
                adam_step(opt)
    assert torch.equal(flats[0].param, flats[1].param)
    s0, s1 = opts[0].state_dict()["state"][0], opts[1].state_dict()["state"][0]
    assert set(s0) == set(s1) and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert float(s1["step"]) == 12.0


def test_adam_step_falls_back_to_optimizer_step() -> None:
    from maskrl.agents.trainer import adam_step

    # Several parameters, and a hook: both go through optimizer.step().
    net = _Net()
    opt = make_adam(net.parameters(), 1e-2, 1e-5)
    calls: list[int] = []
    opt.register_step_post_hook(lambda o, a, k: calls.append(1))
    x, y = _batches(1)[0]
    ((net(x) - y) ** 2).sum().backward()
    adam_step(opt)
    assert calls == [1] and float(opt.state_dict()["state"][0]["step"]) == 1.0
