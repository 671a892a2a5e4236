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
