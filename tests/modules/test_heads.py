"""Output heads: the shared head's aligned projection computes exactly ``F.linear``."""

import pytest
import torch
import torch.nn.functional as F

from unigen.modules.heads import HEADS, aligned_linear


@pytest.mark.parametrize("width", [67, 64, 15439])
def test_aligned_linear_is_linear_forward_and_backward(width):
    x = torch.randn(5, 3, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(width, 32, dtype=torch.float64, requires_grad=True)
    out = aligned_linear(x, weight, 64)
    assert out.shape == (5, 3, width)
    # the output's rows sit in a buffer 64-aligned in width: what the fast kernels need
    assert out.stride(-2) == width + (-width % 64)
    grad = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (x, weight), grad)
    expected = F.linear(x, weight)
    edx, edw = torch.autograd.grad(expected, (x, weight), grad)
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.allclose(dx, edx, atol=1e-12) and torch.allclose(dw, edw, atol=1e-12)
    assert dw.shape == weight.shape  # the weights keep the vocabulary's size


def test_shared_head_keeps_the_vocabularys_size_on_the_cpu():
    head = HEADS.get("shared")(32, 7, 60)
    hidden = torch.randn(4, 32)
    logits = head(hidden)
    assert logits.shape == (4, 67) and logits.is_contiguous()  # no padding on the CPU
    assert torch.allclose(head(hidden, vocab_limit=7), logits[:, :7], atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shared_head_on_cuda_scores_what_the_plain_projection_scores():
    head = HEADS.get("shared")(64, 79, 15360).cuda()
    hidden = torch.randn(300, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = head(hidden)
        plain = F.linear(hidden, head.proj.weight)
    assert logits.shape == plain.shape == (300, 15439)
    assert torch.allclose(logits.float(), plain.float(), atol=2e-2, rtol=2e-2)


class _LowRank(torch.nn.Module):
    """The docs' plugin head (docs/extending.md, 'A head'): no extra_sizes, an option of its own."""

    def __init__(self, dim: int, text_size: int, image_size: int, rank: int = 64) -> None:
        super().__init__()
        self.rank = rank
        self.down = torch.nn.Linear(dim, rank, bias=False)
        self.up = torch.nn.Linear(rank, text_size + image_size, bias=False)

    def forward(self, hidden, vocab_limit=None):
        weight = self.up.weight if vocab_limit is None else self.up.weight[:vocab_limit]
        return F.linear(self.down(hidden), weight)


@pytest.fixture
def lowrank(monkeypatch):
    monkeypatch.setattr(HEADS, "_items", dict(HEADS._items))  # registered for this test only
    HEADS.register("test_lowrank")(_LowRank)
    return "test_lowrank"


def test_build_head_passes_options_and_refuses_what_a_head_cannot_take(lowrank):
    from unigen.modules.heads import build_head

    assert build_head(lowrank, 16, 10, 20, options={"rank": 4}).rank == 4
    assert build_head("separate", 16, 10, 20, extra={"audio": 7})(torch.zeros(1, 16)).shape == (1, 37)
    with pytest.raises(ValueError, match=r"^head 'test_lowrank' \(.*_LowRank\) does not take extra_sizes, "
                                         r"which a model with the further modalities \['audio'\] needs"):
        build_head(lowrank, 16, 10, 20, extra={"audio": 7})
    with pytest.raises(ValueError, match=r"^head_kwargs: head 'test_lowrank' .* does not take rnak \(it takes rank\)"):
        build_head(lowrank, 16, 10, 20, options={"rnak": 4})
    with pytest.raises(ValueError, match=r"^head_kwargs: dim come from the model"):
        build_head(lowrank, 16, 10, 20, options={"dim": 4})
    with pytest.raises(ValueError, match="does not take rank .it takes no options"):
        build_head("shared", 16, 10, 20, options={"rank": 4})


def test_head_options_are_saved_with_the_pipeline(lowrank, tokenizer_dirs, tmp_path):
    from tests.training.test_unified_module import make
    from unigen.pipeline import UnifiedPipeline

    module = make(tokenizer_dirs, head=lowrank, head_kwargs={"rank": 8})
    assert module.net.head.rank == 8 and module.net.config["head_kwargs"] == {"rank": 8}
    module.to_pipeline().save_pretrained(tmp_path / "p")
    pipe = UnifiedPipeline.from_pretrained(tmp_path / "p")
    assert pipe.transformer.head.rank == 8
    assert torch.equal(pipe.transformer.head.down.weight, module.net.head.down.weight)
    assert "head_kwargs" not in make(tokenizer_dirs).net.config  # none given: configs read as before
