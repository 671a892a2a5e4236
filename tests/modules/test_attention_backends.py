"""Attention backends: SDPA (dense prefix mask, ``is_causal``), FlexAttention and the split
backend (prefix moved first, SDPA without a mask) compute the same function, so the training
``attention`` option changes speed, not results."""

import pytest
import torch
import torch._dynamo
from torch.nn.attention.flex_attention import BlockMask

from tests.modules.test_transformer import SEQ, VOCAB, make, prefix_mask
from tests.training.test_unified_module import batch_of
from tests.training.test_unified_module import make as make_module
from unigen.modules.attention import (
    CAUSAL, PrefixOrder, PrefixSplit, attention_pattern, check_attention_backend,
    prefix_attention_mask, split_prefix_attention,
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
    assert attention_pattern("split", 3, SEQ.length, torch.device("cpu"), causal=True) is CAUSAL
    with pytest.raises(ValueError, match="PrefixOrder"):
        attention_pattern("split", 3, SEQ.length, torch.device("cpu"), prefix)


def test_prefix_order_moves_each_rows_prefix_first_and_groups_rows_by_pattern():
    prefix = mixed_prefix(5)  # rows 0, 2, 4: text prefix; rows 1, 3: image prefix
    order = PrefixOrder.of(prefix)
    assert sorted(order.rows.tolist()) == list(range(5))
    groups = order.split.groups
    assert [stop - start for start, stop, _ in groups] == [2, 3] or [stop - start for start, stop, _ in groups] == [3, 2]
    assert groups[0][0] == 0 and groups[-1][1] == 5
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))  # contiguous runs of rows
    reordered = order.apply(prefix)
    for start, stop, p in groups:
        rows = order.rows[start:stop]
        assert len(set(map(tuple, prefix[rows].tolist()))) == 1  # one pattern a group
        assert p == int(prefix[rows[0]].sum())
        assert reordered[start:stop, :p].all() and not reordered[start:stop, p:].any()
        # inside the prefix and inside the rest, positions keep their order
        first = order.positions[start]
        assert torch.equal(first[:p], prefix[rows[0]].nonzero().squeeze(-1))
        assert torch.equal(first[p:], (~prefix[rows[0]]).nonzero().squeeze(-1))
    x = torch.randn(5, SEQ.length, 3)
    assert torch.equal(order.restore(order.apply(x)), x)


def test_split_attention_equals_the_dense_mask_on_reordered_rows():
    prefix = mixed_prefix(4)
    order = PrefixOrder.of(prefix)
    q, k, v = (torch.randn(4, 2, SEQ.length, 8, dtype=torch.float64) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=prefix_attention_mask(prefix))
    reorder = [order.apply(t.transpose(1, 2)).transpose(1, 2) for t in (q, k, v)]
    split = split_prefix_attention(*reorder, order.split)
    assert torch.allclose(order.restore(split.transpose(1, 2)).transpose(1, 2), dense, atol=1e-12)


def test_split_attention_takes_groups_with_no_prefix_or_no_rest():
    q, k, v = (torch.randn(3, 2, 6, 4, dtype=torch.float64) for _ in range(3))
    out = split_prefix_attention(q, k, v, PrefixSplit(((0, 1, 0), (1, 3, 6))))
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, full, atol=1e-12)  # P = 0 and P = S both mean full attention


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
def test_split_computes_what_sdpa_computes_forward_and_backward(position):
    tokens = torch.randint(0, VOCAB.total_size, (5, SEQ.length))
    prefix = mixed_prefix(5)
    results = {}
    for backend in ("sdpa", "split"):
        torch.manual_seed(0)  # the same weights
        net = make(position).double()
        net.attention_backend = backend
        hidden = net.hidden_states(tokens, prefix)
        hidden.pow(2).sum().backward()
        results[backend] = hidden, [p.grad for p in net.parameters()]
    (h_dense, g_dense), (h_split, g_split) = results["sdpa"], results["split"]
    assert torch.allclose(h_dense, h_split, atol=1e-10)
    assert [g is None for g in g_dense] == [g is None for g in g_split]
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g_dense, g_split) if a is not None)
    assert not any(torch.allclose(h_dense[i], h_dense[i + 1]) for i in range(4))  # rows differ


def test_split_leaves_full_and_causal_attention_alone():
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    net = make("rope")
    dense = [net.hidden_states(tokens), net.hidden_states(tokens, causal=True)]
    net.attention_backend = "split"
    assert torch.equal(net.hidden_states(tokens), dense[0])
    assert torch.equal(net.hidden_states(tokens, causal=True), dense[1])
    with pytest.raises(ValueError, match="exclusive"):
        net.hidden_states(tokens, mixed_prefix(2), causal=True)


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


def test_qk_norm_keeps_queries_and_keys_in_the_autocast_dtype():
    """qk-norm's float32 weight would promote bf16 queries and keys: FlexAttention and the KV
    caches (which autocast does not cast) would then run and store them in float32."""
    from unigen.modules.attention import SelfAttention

    attention = SelfAttention(16, heads=2, qk_norm=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = attention.project_kv(torch.randn(2, 5, 16), None)
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16
    q, k, v = attention.project_kv(torch.randn(2, 5, 16), None)  # no autocast: as the weights
    assert q.dtype == k.dtype == v.dtype == torch.float32


def test_flex_training_on_the_cpu_is_one_clear_error():
    net = make().train()
    net.attention_backend = "flex"
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    with pytest.raises(RuntimeError, match="attention: flex cannot train on the CPU") as err:
        net.hidden_states(tokens, mixed_prefix(2))
    assert "\n" not in str(err.value)


def test_backend_is_checked_and_not_saved():
    net = make()
    with pytest.raises(ValueError, match=r"attention must be one of \['sdpa', 'flex', 'split'\]"):
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


def backend_losses(tokenizer_dirs, device: str, backward: bool, other: str = "flex"):
    """The unified loss of one mixed-task batch (text and image prefixes) with SDPA's dense mask
    and with ``other``, and their gradients when ``backward``."""
    batch = batch_of()
    results = {}
    for backend in ("sdpa", other):
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
    return results["sdpa"], results[other]


def test_training_losses_do_not_depend_on_the_backend(tokenizer_dirs):
    (loss_sdpa, _), (loss_flex, _) = backend_losses(tokenizer_dirs, "cpu", backward=False)
    assert torch.allclose(loss_sdpa, loss_flex, atol=1e-5)


def test_split_training_gradients_equal_sdpa_ones(tokenizer_dirs):
    (loss_sdpa, g_sdpa), (loss_split, g_split) = backend_losses(tokenizer_dirs, "cpu", backward=True,
                                                              other="split")
    assert torch.allclose(loss_sdpa, loss_split, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_sdpa, g_split) if a is not None)


@pytest.mark.gpu
@pytest.mark.parametrize("other", ["flex", "split"])
def test_training_gradients_equal_sdpa_ones_on_cuda(tokenizer_dirs, other):
    (loss_sdpa, g_sdpa), (loss_other, g_other) = backend_losses(tokenizer_dirs, "cuda", backward=True,
                                                              other=other)
    assert torch.allclose(loss_sdpa, loss_other, atol=1e-4)
    assert [g is None for g in g_sdpa] == [g is None for g in g_other]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_sdpa, g_other) if a is not None)


def test_compiled_blocks_take_each_steps_block_mask_without_recompiling():
    """Every training step builds a new block mask (a new closure over that batch's prefixes);
    compiled blocks must reuse their graph for it, not recompile until torch gives up."""
    net = make()
    net.attention_backend = "flex"
    for block in net.blocks:
        block.compile()
    tokens = torch.randint(0, VOCAB.total_size, (4, SEQ.length))
    with torch.no_grad():
        first = net.hidden_states(tokens, mixed_prefix(4))  # compiles
        # config.patch, not monkeypatch: undoing a monkeypatch deletes the config entry
        with torch._dynamo.config.patch(error_on_recompile=True):
            for prefix in (~mixed_prefix(4), mixed_prefix(4)):
                again = net.hidden_states(tokens, prefix)
    assert torch.allclose(first, again, atol=1e-5)


def test_compiled_blocks_take_any_task_mix_with_the_split_backend_without_recompiling():
    """The split backend's groups (rows per task, prefix lengths) change with every batch's task
    mix; compiled blocks must not recompile for each new mix."""
    net = make("rope")
    net.attention_backend = "split"
    for block in net.blocks:
        block.compile()
    tokens = torch.randint(0, VOCAB.total_size, (6, SEQ.length))
    mixes = [mixed_prefix(6)[rows] for rows in ([0, 1, 2, 3, 4, 5], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0])]
    assert len({PrefixOrder.of(m).split for m in mixes}) == 3
    with torch.no_grad():
        first = net.hidden_states(tokens, mixes[0])  # compiles
        with torch._dynamo.config.patch(error_on_recompile=True):
            for prefix in mixes[1:]:
                net.hidden_states(tokens, prefix)
            again = net.hidden_states(tokens, mixes[0])
        net.attention_backend = "sdpa"
        dense = net.hidden_states(tokens, mixes[0])
    assert torch.allclose(first, again, atol=1e-6) and torch.allclose(first, dense, atol=1e-5)
