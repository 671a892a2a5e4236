"""Muon (orthogonalized momentum for hidden matrices) with AdamW for the rest, as one optimizer."""

import copy
import math

import pytest
import torch
from docs_testkit import exec_doc_block
from torch import nn

from unigen.training.muon import MuonAdamW, orthogonalize
from unigen.training.optim import OPTIMIZERS, build_optimizer
from unigen.training.unified_module import UnifiedModule
from tests.training.test_unified_module import batch_of, make, overfit


@pytest.mark.parametrize("shape", [(3, 16, 48), (48, 16), (32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the CUDA default
def test_orthogonalize_flattens_the_spectrum(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    *batch, rows, cols = shape
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(*batch, rows, k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(*batch, cols, k, generator=gen))
    # one dominant direction, as momentum often has, over a spread of smaller ones (100:1); values
    # far smaller than that are lifted only partly by five steps, as in Muon's reference code
    spectrum = torch.cat([torch.tensor([5.0]), torch.linspace(1.0, 0.05, k - 1)])
    g = u @ torch.diag(spectrum) @ v.mT
    out = orthogonalize(g, dtype=dtype)
    assert out.shape == g.shape and out.dtype == g.dtype
    singular = torch.linalg.svdvals(out)
    # the quintic iteration's band (Jordan et al.), not exactly 1
    assert singular.min() > 0.6 and singular.max() < 1.25, singular
    # the same singular vectors: U V^T of g, up to that band
    target = u @ v.mT
    cosine = (out * target).sum((-2, -1)) / (out.norm(dim=(-2, -1)) * target.norm(dim=(-2, -1)))
    assert (cosine > 0.97).all(), cosine


@pytest.mark.gpu
def test_muon_steps_on_cuda_like_on_the_cpu():
    """bf16 Newton-Schulz and fused AdamW on the GPU against float32 and AdamW on the CPU."""
    cpu, gpu = _net(), _net().cuda()
    opts = [_optimizer(cpu), _optimizer(gpu)]
    assert opts[1].defaults["fused"] and opts[1]._adamw.defaults["fused"]
    for step in range(3):
        _fake_grads(cpu, step)
        for p, q in zip(gpu.parameters(), cpu.parameters()):
            p.grad = q.grad.cuda()
        for opt in opts:
            opt.step()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        # bf16 iterations: the hidden matrix within a bf16 rounding of the update, others exact-ish
        tol = 5e-4 if name == "blocks.0.weight" else 1e-6
        torch.testing.assert_close(q.cpu(), p.detach(), rtol=0, atol=tol, msg=name)


def test_orthogonalize_refuses_vectors():
    with pytest.raises(ValueError, match="matrices"):
        orthogonalize(torch.ones(4))


class Tiny(nn.Module):
    """The parameter kinds of a transformer: embedding, hidden layer, norm, head."""

    def __init__(self):
        super().__init__()
        self.token_emb = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 12)])
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 6)


def _net():
    torch.manual_seed(0)
    return Tiny()


def _optimizer(net, **kw):
    return OPTIMIZERS.get("muon")(net, kw.pop("lr", 0.01), kw.pop("weight_decay", 0.0), (0.9, 0.95),
                                  hidden=net.blocks)


def _fake_grads(net, step):
    gen = torch.Generator().manual_seed(step)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_muon_step_is_the_scaled_orthogonalized_gradient():
    net = _net()
    opt = _optimizer(net, lr=0.01)
    w = net.blocks[0].weight
    before = w.detach().clone()
    _fake_grads(net, 0)
    expected = -0.01 * 0.2 * math.sqrt(max(w.shape)) * orthogonalize(w.grad)
    opt.step()
    # first step: the Nesterov direction is a multiple of the gradient, and the iteration
    # normalizes scale away
    torch.testing.assert_close(w.detach() - before, expected, rtol=1e-4, atol=1e-7)
    # Moonlight's scaling: the update's RMS is about AdamW's (0.2 lr)
    rms = (w.detach() - before).pow(2).mean().sqrt().item()
    assert 0.1 * 0.01 < rms < 0.3 * 0.01


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_hidden_matrices_step_as_pytorchs_own_muon(monkeypatch):
    """An independent implementation of the step around the iteration: ``torch.optim.Muon`` with
    Moonlight's scaling, Nesterov momentum and decoupled decay.  Its iteration always runs in bf16
    (ours in float32 on the CPU), so it is handed ours: the two must then agree to float32
    rounding, and any difference in momentum, scaling or decay shows."""
    from torch.optim import _muon

    monkeypatch.setattr(_muon, "_zeropower_via_newtonschulz",
                        lambda grad, coefficients, steps, eps: orthogonalize(grad, steps))
    net, reference = _net(), _net()
    opt = _optimizer(net, weight_decay=0.1)
    theirs = torch.optim.Muon([reference.blocks[0].weight], lr=0.01, weight_decay=0.1, momentum=0.95,
                              nesterov=True, adjust_lr_fn="match_rms_adamw")
    start = net.blocks[0].weight.detach().clone()
    for step in range(4):
        _fake_grads(net, step)
        _fake_grads(reference, step)
        opt.step()
        theirs.step()
    ours, expected = net.blocks[0].weight.detach(), reference.blocks[0].weight.detach()
    assert (ours - start).abs().max() > 0.01  # four steps of about 0.2 * sqrt(12) * lr each
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_non_hidden_parameters_step_exactly_as_adamw():
    net, reference = _net(), _net()
    opt = _optimizer(net, weight_decay=0.1)
    groups = [{"params": [reference.head.weight], "weight_decay": 0.1},
              {"params": [p for n, p in reference.named_parameters()
                          if n != "head.weight" and n != "blocks.0.weight"], "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.95))
    for step in range(3):
        _fake_grads(net, step)
        _fake_grads(reference, step)
        opt.step()
        adamw.step()
    # every parameter but the hidden matrix as AdamW, the head decayed, embeddings, norms and
    # biases not (build_adamw's groups)
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert torch.equal(p, q) == (name != "blocks.0.weight"), name
    assert opt.param_groups[1]["params"] == [net.head.weight]
    assert opt.param_groups[1]["weight_decay"] == 0.1


def test_groups_cover_every_parameter_once():
    net = _net()
    opt = _optimizer(net)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in net.parameters())
    muon = [g for g in opt.param_groups if g["use_muon"]]
    assert len(muon) == 1 and muon[0]["params"] == [net.blocks[0].weight]  # its bias is 1-D: AdamW


def test_state_dict_round_trip_resumes_exactly_and_the_schedule_reaches_both_parts():
    net = _net()
    opt = _optimizer(net)
    for step in range(2):
        _fake_grads(net, step)
        opt.step()
    saved_params = {k: v.clone() for k, v in net.state_dict().items()}
    saved = copy.deepcopy(opt.state_dict())  # its tensors are the live state
    _fake_grads(net, 2)
    opt.step()
    straight = {k: v.clone() for k, v in net.state_dict().items()}

    net.load_state_dict(saved_params)
    resumed = _optimizer(net)
    resumed.load_state_dict(saved)
    _fake_grads(net, 2)
    resumed.step()
    assert all(torch.equal(straight[k], v) for k, v in net.state_dict().items())

    # a scheduler writes ``lr`` into the optimizer's groups: after a load too, AdamW must read it
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for group in resumed.param_groups:
        group["lr"] = 0.0
    _fake_grads(net, 3)
    resumed.step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_step_flagged_found_inf_changes_nothing_and_the_next_trains_as_if_it_never_ran():
    """NonFiniteLossGuard's on-device skip (``found_inf``, as GradScaler hands fused optimizers)."""
    def optimizer(net):
        groups = [{"params": [net.blocks[0].weight], "use_muon": True, "weight_decay": 0.1},
                  {"params": [p for n, p in net.named_parameters() if n != "blocks.0.weight"]}]
        return MuonAdamW(groups, lr=0.01, fused=True, weight_decay=0.1)

    def snapshot(net, opt):
        return copy.deepcopy((net.state_dict(), opt.state_dict()["state"]))

    net, reference = _net(), _net()
    opt, theirs = optimizer(net), optimizer(reference)
    for step in range(2):
        _fake_grads(net, step)
        _fake_grads(reference, step)
        opt.step()
        theirs.step()
    before = snapshot(net, opt)
    for p in net.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    after = snapshot(net, opt)
    for was, now in zip(before, after):
        torch.testing.assert_close(now, was, rtol=0, atol=0)  # weights, momentum, Adam moments, step
    opt.found_inf = torch.tensor(0.0)
    _fake_grads(net, 2)
    _fake_grads(reference, 2)
    opt.step()
    theirs.step()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        MuonAdamW([{"params": [nn.Parameter(torch.ones(3))], "use_muon": True}])
    with pytest.raises(ValueError, match="momentum"):
        MuonAdamW([{"params": [nn.Parameter(torch.ones(3, 3))], "use_muon": True}], momentum=1.0)
    with pytest.raises(ValueError, match="hidden layers"):
        OPTIMIZERS.get("muon")(_net(), 0.01, 0.0, (0.9, 0.95))
    with pytest.raises(KeyError, match="optimizer"):
        OPTIMIZERS.get("lion")


def test_muon_is_refused_under_fsdp():
    from lightning.pytorch.strategies import FSDPStrategy

    net = _net()
    with pytest.raises(ValueError, match="FSDPStrategy shards"):
        build_optimizer("muon", net, 0.01, 0.0, (0.9, 0.95), hidden=net.blocks, strategy=FSDPStrategy())
    build_optimizer("adamw", net, 0.01, 0.0, (0.9, 0.95), strategy=FSDPStrategy())


def test_unified_module_trains_with_muon(tokenizer_dirs):
    with pytest.raises(KeyError, match="unknown optimizer 'sgd'"):
        UnifiedModule(**tokenizer_dirs, optimizer="sgd")
    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={"t2i": 1.0}, optimizer="muon")
    hp = module.hparams
    opt = build_optimizer(hp.optimizer, module.net, 3e-3, hp.weight_decay, tuple(hp.betas),
                          hidden=module.net.blocks)
    muon_params = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = [n for n, p in module.net.named_parameters() if id(p) in muon_params]
    assert names and all(n.startswith("blocks.") and n.endswith(".weight") for n in names)
    assert not any("norm" in n for n in names)
    losses = overfit(module, batch_of(), 40, opt)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


def test_the_documented_optimizer_runs_as_written():
    exec_doc_block("# my_optimizer.py", "my_optimizer")
    try:
        net = _net()
        opt = build_optimizer("adamw_nesterov", net, 0.01, 0.1, (0.9, 0.95), hidden=net.blocks)
        assert isinstance(opt, torch.optim.NAdam) and opt.defaults["decoupled_weight_decay"]
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
        before = net.head.weight.detach().clone()
        _fake_grads(net, 0)
        opt.step()
        assert not torch.equal(before, net.head.weight)
    finally:
        OPTIMIZERS._items.pop("adamw_nesterov")
