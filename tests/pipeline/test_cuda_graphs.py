"""CUDA-graph decoding (``cuda_graphs=True``): the preallocated prefix KV buffer, the pipeline's
reuse of one captured ``model_fn`` per task pattern and batch shape with the prefix refreshed in
place, a clear error without CUDA, and (on a GPU) replays identical to eager decoding."""

from __future__ import annotations

import contextlib

import pytest
import torch

import unigen.model_fns as model_fns_module
import unigen.pipeline as pipeline_module
from unigen.data.shapes import ShapesDataset
from unigen.modules.attention import KVBuffer
from unigen.training.unified_module import UnifiedModule

QUESTIONS = ["what color is the star?", "how many circles are there?", "is there a red square?"]


def images(n, seed=0):
    ds = ShapesDataset("val", n, 32, seed=seed)
    return torch.stack([ds[i]["image"] for i in range(n)])


def test_kv_buffer_attends_like_concatenation_and_takes_exactly_the_rest():
    g = torch.Generator().manual_seed(0)
    past_k, past_v, k, v = (torch.randn(2, 3, n, 4, generator=g) for n in (5, 5, 2, 2))
    buffer = KVBuffer.holding(past_k, past_v, room=2)
    keys, values = buffer.fill(k, v)
    assert torch.equal(keys, torch.cat((past_k, k), 2)) and torch.equal(values, torch.cat((past_v, v), 2))
    assert keys.data_ptr() == buffer.keys.data_ptr()  # written in place, no copy of the prefix
    with pytest.raises(ValueError, match="takes exactly the rest"):
        buffer.fill(k[:, :, :1], v[:, :, :1])  # a stale slot would be attended to


def test_prefix_cache_refresh_is_in_place_and_checks_its_shape(pipe):
    net = pipe.transformer
    space = pipe.space
    from unigen.diffusion.tasks import TASKS, TaskInputs

    def prefill(seed, n=2):
        codes = pipe.image_tokenizer.encode(images(n, seed))
        tb = TASKS.get("caption")().build(TaskInputs(codes, captions=["<mask>"] * n), space)
        return tb.tokens, net.prefill(tb.tokens, tb.prefix)

    tokens_a, a = prefill(0)
    tokens_b, b = prefill(1)
    keys, cached = a.kv[0].keys, a.kv[0].cached
    a.copy_(b)  # (the slots after the prefix are scratch space, written by every step)
    assert a.kv[0].keys is keys and torch.equal(keys[:, :, :cached], b.kv[0].keys[:, :, :cached])
    assert torch.equal(net.forward_cached(tokens_b, a), net.forward_cached(tokens_b, b))
    with pytest.raises(ValueError, match="same batch shape"):
        a.copy_(prefill(2, n=3)[1])


class RecordingGraph:
    """CPU stand-in for GraphedModelFn with a graph's constraint: the prefix cache it reads is the
    one present at capture (its first call), as a replayed graph reads the captured addresses."""

    made: list["RecordingGraph"] = []

    def __init__(self, fn, warmup: int = 2) -> None:
        self.fn, self.captured = fn, None
        RecordingGraph.made.append(self)

    def __call__(self, tokens):
        owner = getattr(self.fn, "__self__", None)
        if owner is not None:  # a PrefixCachedModel: its cache tensors must be the captured ones
            keys = owner._caches[tokens.shape[0]][1].kv[0].keys
            self.captured = keys if self.captured is None else self.captured
            assert keys is self.captured, "the prefix cache was replaced, not refreshed in place"
        return self.fn(tokens)


def test_graphed_decoding_reuses_one_model_fn_per_task_and_refreshes_the_prefix(pipe, monkeypatch):
    monkeypatch.setattr(model_fns_module, "GraphedModelFn", RecordingGraph)
    monkeypatch.setattr(pipeline_module, "check_cuda_graphs", lambda device: None)
    monkeypatch.setattr(pipe, "_graphed", {})
    RecordingGraph.made.clear()
    for seed in (0, 1):  # the second batch has other images: a new prefix in the same buffers
        x = images(3, seed)
        assert pipe.caption(x, seed=4, cuda_graphs=True) == pipe.caption(x, seed=4)
        assert (pipe.answer(x, QUESTIONS, seed=4, cuda_graphs=True)
                == pipe.answer(x, QUESTIONS, seed=4))
        run = lambda **kw: pipe.text_to_image(["a red circle", "a blue square"], num_steps=4,  # noqa: E731
                                              seed=seed, guidance_scale=2.0, output="tensor", **kw)
        assert torch.equal(run(cuda_graphs=True), run())
        uncached = pipe.caption(x, seed=4, use_cache=False, cuda_graphs=True)
        assert uncached == pipe.caption(x, seed=4, use_cache=False)
    # one captured model_fn per (prefix pattern, decoded positions, cache on/off), reused by the
    # second batch: captions and answers share one here (image prefix, the whole text decoded)
    keys = {(cached, limit) for cached, _, limit, *_ in pipe._graphed}
    assert len(pipe._graphed) == len(RecordingGraph.made) == 3
    assert keys == {(True, pipe.transformer.vocab.text_size), (True, None),
                    (False, pipe.transformer.vocab.text_size)}
    # another autocast state gets its own graphs and cache (they replay their own precision)
    monkeypatch.setattr(pipeline_module, "autocast_state", lambda: (True, torch.bfloat16))
    pipe.caption(images(3), seed=4, cuda_graphs=True)
    assert len(pipe._graphed) == len(RecordingGraph.made) == 4
    pipe.free_cuda_graphs()  # the captured graphs and the caches they hold go
    assert pipe._graphed == {}


def test_cuda_graphs_without_cuda_is_one_clear_error(pipe):
    if pipe.device.type == "cuda":
        pytest.skip("the pipeline is on a CUDA device")
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device") as err:
        pipe.caption(images(1), cuda_graphs=True)
    assert "\n" not in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_replays_equal_eager_decoding_on_a_gpu(tokenizer_dirs, precision):
    torch.manual_seed(0)
    m = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=64, depth=2, heads=4,
                      tasks={"t2i": 1, "caption": 1, "vqa": 1})
    gpu = m.to_pipeline().to("cuda")
    region = torch.autocast("cuda", dtype=precision) if precision else contextlib.nullcontext()
    with region:
        for seed in (0, 1):
            x = images(4, seed).cuda()
            assert gpu.caption(x, seed=2, cuda_graphs=True) == gpu.caption(x, seed=2)
            q = QUESTIONS + QUESTIONS[:1]
            assert gpu.answer(x, q, seed=2, cuda_graphs=True) == gpu.answer(x, q, seed=2)
            run = lambda **kw: gpu.text_to_image(["a red circle"] * 2, num_steps=4, seed=seed,  # noqa: E731
                                                 guidance_scale=2.0, output="tensor", **kw)
            assert torch.equal(run(cuda_graphs=True), run())
