"""benchmarks/profiling.py: kernel and operator names sorted into kinds of work, and the per-kind
time of a real profile."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.profiling import host_ops, is_wrapper, kind_of, time_by_kind


@pytest.mark.parametrize("name, kind", [
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("flash_fwd_kernel", "attention"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "fused_triton"),
    ("aten::_log_softmax", "loss_softmax"), ("aten::nll_loss_forward", "loss_softmax"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...FusedAdam...>", "optimizer"),
    ("Memcpy HtoD (Pinned -> Device)", "copy_fill"), ("aten::index", "copy_fill"),
    ("aten::silu", "other"),
])
def test_names_fall_into_kinds(name, kind):
    assert kind_of(name) == kind


def test_time_by_kind_splits_a_real_cpu_profile():
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(64, 128, requires_grad=True)
    w = torch.randn(128, 128, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            q = (x @ w).view(1, 4, 64, 32)
            out = F.scaled_dot_product_attention(q, q, q)
            F.cross_entropy(out.reshape(64, 128), torch.zeros(64, dtype=torch.long)).backward()
    by_kind = time_by_kind(prof.key_averages(), on_device=False)
    assert {"matmul", "attention", "loss_softmax"} <= set(by_kind)
    assert all(v > 0 for v in by_kind.values())
    assert list(by_kind.values()) == sorted(by_kind.values(), reverse=True)


def _profile_with_an_enclosing_range():
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.randn(64, 128)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            # Lightning runs forward and backward inside the optimizer's step (its closure)
            with record_function("Optimizer.step#AdamW.step"):
                (x @ x.T).relu().sum()
    return prof.key_averages()


def test_ranges_around_other_work_are_no_kind_of_their_own():
    averages = _profile_with_an_enclosing_range()
    wrapper = next(r for r in averages if r.key == "Optimizer.step#AdamW.step")
    assert is_wrapper(wrapper) and wrapper.cpu_time_total > 0
    assert not any(is_wrapper(r) for r in averages if r.key == "aten::mm")
    by_kind = time_by_kind(averages, on_device=False)
    # "adam" in the range's name would have made it optimizer time (the whole step, on a GPU)
    assert "optimizer" not in by_kind and by_kind["matmul"] > 0


def test_host_ops_lists_the_heaviest_operators_without_wrappers():
    ops = host_ops(_profile_with_an_enclosing_range(), top=3)
    assert 0 < len(ops) <= 3 and "Optimizer.step#AdamW.step" not in ops
    assert ops["aten::mm"]["calls"] == 3
    totals = [v["ms"] for v in ops.values()]
    assert totals == sorted(totals, reverse=True)
    assert all(abs(v["ms_per_call"] * v["calls"] - v["ms"]) < 1e-2 for v in ops.values())
