"""Attention backends: SDPA (dense prefix mask, ``is_causal``) and FlexAttention compute the same
function, so the training ``attention`` option changes speed, not results."""

import pytest
import torch
import torch._dynamo
from torch.nn.attention.flex_attention import BlockMask

from tests.modules.test_transformer import SEQ, VOCAB, make, prefix_mask
from tests.training.test_unified_module import batch_of
from tests.training.test_unified_module import make as make_module
from unigen.modules.attention import (
    CAUSAL, attention_pattern, check_attention_backend, prefix_attention_mask,
)
from unigen.modules.transformer import UnifiedTransformer, causal_attention_mask
from unigen.training.ar_module import AutoregressiveModule
from unigen.training.unified_module import UnifiedModule


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled graphs (FlexAttention's kernel, compiled blocks) keep fake tensors alive in
    dynamo's caches; later tests that walk every live tensor (tests/reliability/test_memory.py)
    must not meet them."""
    yield
    torch._dynamo.reset()


def mixed_prefix(b: int) -> torch.Tensor:
    """Rows with different prefixes, as a mixed-task training batch has: image (+ a few text
    positions) for odd rows, the text segment for even rows."""
    prefix = prefix_mask(b)
    prefix[::2] = False
    prefix[::2, SEQ.text] = True
    return prefix


def test_patterns_per_backend():
    prefix = mixed_prefix(3)
    dense = attention_pattern("sdpa", 3, SEQ.length, torch.device("cpu"), prefix)
    assert torch.equal(dense, prefix_attention_mask(prefix))
    assert attention_pattern("sdpa", 3, SEQ.length, torch.device("cpu"), causal=True) is CAUSAL
    assert attention_pattern("flex", 3, SEQ.length, torch.device("cpu")) is None
    block = attention_pattern("flex", 3, SEQ.length, torch.device("cpu"), prefix)
    assert isinstance(block, BlockMask) and block.shape[0] == 3
    with pytest.raises(ValueError, match="exclusive"):
        attention_pattern("sdpa", 3, SEQ.length, torch.device("cpu"), prefix, causal=True)


def test_a_block_masks_dense_form_is_the_prefix_pattern():
    prefix = mixed_prefix(2)
    block = attention_pattern("flex", 2, SEQ.length, torch.device("cpu"), prefix)
    b, q, kv = torch.meshgrid(torch.arange(2), torch.arange(SEQ.length), torch.arange(SEQ.length),
                              indexing="ij")
    expected = prefix_attention_mask(prefix)[:, 0]
    assert torch.equal(block.mask_mod(b, torch.zeros_like(b), q, kv), expected)


def test_sdpa_causal_kernel_equals_the_explicit_mask():
    net = make()
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    via_kernel = net.hidden_states(tokens, causal=True)
    x = net.embed(tokens)
    mask = causal_attention_mask(SEQ.length)
    for block in net.blocks:
        x, _ = block(x, mask, net.rotary_angles())
    assert torch.allclose(via_kernel, net.norm(x), atol=1e-6)


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("causal", [False, True], ids=["prefix", "causal"])
def test_flex_computes_what_sdpa_computes(position, causal):
    tokens = torch.randint(0, VOCAB.total_size, (4, SEQ.length))
    prefix = None if causal else mixed_prefix(4)
    hidden = {}
    for backend in ("sdpa", "flex"):
        net = make(position)
        net.attention_backend = backend
        with torch.no_grad():  # FlexAttention has no CPU backward: gradients are a GPU test
            hidden[backend] = net.hidden_states(tokens, prefix, causal)
    assert torch.allclose(hidden["sdpa"], hidden["flex"], atol=1e-5)


def test_flex_training_on_the_cpu_is_one_clear_error():
    net = make().train()
    net.attention_backend = "flex"
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    with pytest.raises(RuntimeError, match="attention: flex cannot train on the CPU"):
        net.hidden_states(tokens, mixed_prefix(2))


def test_backend_is_checked_and_not_saved():
    net = make()
    with pytest.raises(ValueError, match=r"attention must be one of \['sdpa', 'flex'\]"):
        net.attention_backend = "flash"
    dropout_net = UnifiedTransformer(VOCAB, SEQ, dim=32, depth=1, heads=4, dropout=0.1)
    with pytest.raises(ValueError, match="no attention dropout"):
        dropout_net.attention_backend = "flex"
    net.attention_backend = "flex"
    assert "attention" not in net.config  # how it runs, not what it is
    assert check_attention_backend("sdpa") == "sdpa"


@pytest.mark.parametrize("cls", [UnifiedModule, AutoregressiveModule])
def test_modules_check_the_option_when_made(tokenizer_dirs, cls):
    with pytest.raises(ValueError, match="attention must be one of"):
        cls(**tokenizer_dirs, image_size=32, attention="flash")


def backend_losses(tokenizer_dirs, device: str, backward: bool):
    """The unified loss of one mixed-task batch (text and image prefixes) with each backend, and
    its gradients when ``backward``."""
    batch = batch_of()
    results = {}
    for backend in ("sdpa", "flex"):
        torch.manual_seed(0)  # the same weights
        module = make_module(tokenizer_dirs, tasks={"t2i": 1.0, "caption": 0.5, "vqa": 1.0},
                             cond_dropout=0.1, attention=backend).to(device)
        assert module.net.attention_backend == backend
        gen = torch.Generator().manual_seed(0)
        inputs = module.task_inputs({**batch, "image": batch["image"].to(device)})
        tb, assignment = module.mixture.build(inputs, module.space, gen)
        with torch.set_grad_enabled(backward):
            loss, _ = module.diffusion_loss(tb, gen, assignment)
        if backward:
            loss.backward()
        results[backend] = (loss.detach(), [p.grad for p in module.net.parameters()])
    return results["sdpa"], results["flex"]


def test_training_losses_do_not_depend_on_the_backend(tokenizer_dirs):
    (loss_sdpa, _), (loss_flex, _) = backend_losses(tokenizer_dirs, "cpu", backward=False)
    assert torch.allclose(loss_sdpa, loss_flex, atol=1e-5)


@pytest.mark.gpu
def test_flex_training_gradients_equal_sdpa_ones_on_cuda(tokenizer_dirs):
    (loss_sdpa, g_sdpa), (loss_flex, g_flex) = backend_losses(tokenizer_dirs, "cuda", backward=True)
    assert torch.allclose(loss_sdpa, loss_flex, atol=1e-4)
    assert [g is None for g in g_sdpa] == [g is None for g in g_flex]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_sdpa, g_flex) if a is not None)


def test_compiled_blocks_take_each_steps_block_mask_without_recompiling(monkeypatch):
    """Every training step builds a new block mask (a new closure over that batch's prefixes);
    compiled blocks must reuse their graph for it, not recompile until torch gives up."""
    net = make()
    net.attention_backend = "flex"
    for block in net.blocks:
        block.compile()
    tokens = torch.randint(0, VOCAB.total_size, (4, SEQ.length))
    with torch.no_grad():
        first = net.hidden_states(tokens, mixed_prefix(4))  # compiles
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        for prefix in (~mixed_prefix(4), mixed_prefix(4)):
            again = net.hidden_states(tokens, prefix)
    assert torch.allclose(first, again, atol=1e-5)
