"""Model FLOPs of the unified transformer and model FLOPs utilisation (MFU).

Counting follows PaLM (Chowdhery et al. 2022, appendix B) and Kaplan et al. (2020): a matmul with a
``[m, k] x [k, n]`` product costs ``2mkn``; a training step costs three forward passes (forward, and
twice that backward).  Per sequence of ``S`` tokens the forward pass is

    2 * S * N_blocks                   every block's linear layers (qkv, proj, SwiGLU gate_up, down)
  + 4 * depth * S_q * S_k * dim        attention scores (QK^T) and the weighted sum (AV)
  + 2 * dim * V * P                    the output head, on the P positions whose logits are computed

with ``N_blocks = depth * (4 dim^2 + 3 dim hidden)``.  Embedding look-ups, norms, rotary and softmax
are not matmuls and are not counted (as in MFU).  Masks do not reduce the count: SDPA's kernels
compute every score of a masked (prefix or causal) attention too.  ``tests/benchmarks`` checks these
formulas against ``torch.utils.flop_counter`` on a real network, exactly.

MFU = model FLOPs per second / peak FLOPs per second.  The peak is measured on the device with a
large matmul in the training dtype (so MFU reads "fraction of what this device's matmuls reach");
for known GPUs the datasheet dense bf16 peak is reported next to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s
DATASHEET_BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12}


@dataclass(frozen=True)
class TransformerShape:
    """What the FLOP count of a :class:`~unigen.modules.transformer.UnifiedTransformer` depends on."""

    dim: int
    depth: int
    mlp_hidden: int
    seq_len: int
    vocab_size: int

    @classmethod
    def of(cls, net) -> "TransformerShape":
        return cls(dim=net.dim, depth=net.depth, mlp_hidden=net.blocks[0].mlp.down.in_features,
                   seq_len=net.sequence.length, vocab_size=net.vocab.total_size)

    @property
    def block_params(self) -> int:
        """Weights of the blocks' linear layers (what ``2 * tokens * N`` multiplies)."""
        d, h = self.dim, self.mlp_hidden
        return self.depth * (4 * d * d + 3 * d * h)

    @property
    def head_params(self) -> int:
        return self.dim * self.vocab_size


def forward_flops(shape: TransformerShape, num_sequences: int, head_positions: int,
                  query_len: int | None = None, key_len: int | None = None) -> int:
    """Forward FLOPs of ``num_sequences`` sequences, ``query_len`` positions computed each (all by
    default) attending to ``key_len`` keys (all by default), with logits at ``head_positions``
    positions in total."""
    q = shape.seq_len if query_len is None else query_len
    k = shape.seq_len if key_len is None else key_len
    per_sequence = 2 * q * shape.block_params + 4 * shape.depth * q * k * shape.dim
    return num_sequences * per_sequence + 2 * shape.head_params * head_positions


def training_flops(shape: TransformerShape, num_sequences: int, head_positions: int) -> int:
    """Forward + backward FLOPs of one optimizer step (backward = 2x forward)."""
    return 3 * forward_flops(shape, num_sequences, head_positions)


def masked_decode_flops(shape: TransformerShape, prefix_len: int, rows_per_call: int, calls: int,
                        prefix_cache: bool, logit_positions: int | None = None) -> int:
    """Masked-diffusion decoding (``unigen.sampling.decode``): each call runs the whole sequence with
    logits at ``logit_positions`` of each row (default: everywhere; the pipeline asks for the decoded
    segment only), or, with the prefix cache, one prefill of the ``prefix_len`` condition positions
    and then only the other positions (logits there) against all keys."""
    s = shape.seq_len
    if not prefix_cache:
        per_row = s if logit_positions is None else logit_positions
        return calls * forward_flops(shape, rows_per_call, rows_per_call * per_row)
    rest = s - prefix_len
    prefill = forward_flops(shape, rows_per_call, 0, query_len=prefix_len, key_len=prefix_len)
    return prefill + calls * forward_flops(shape, rows_per_call, rows_per_call * rest, query_len=rest, key_len=s)


def ar_decode_flops(shape: TransformerShape, prompt_len: int, num_tokens: int, rows: int,
                    kv_cache: bool) -> int:
    """Autoregressive decoding (``unigen.sampling.autoregressive``) of ``num_tokens`` tokens after a
    ``prompt_len`` prompt, logits at one position per row and call: with the KV cache a prefill and
    then one position per step against the keys so far; without it the whole sequence every step."""
    if not kv_cache:
        return num_tokens * forward_flops(shape, rows, rows)
    total = forward_flops(shape, rows, rows, query_len=prompt_len, key_len=prompt_len)
    for step in range(num_tokens - 1):
        total += forward_flops(shape, rows, rows, query_len=1, key_len=prompt_len + step + 1)
    return total


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Fraction of the peak that ``flops`` done in ``seconds`` achieve."""
    if seconds <= 0 or peak_flops_per_s <= 0:
        raise ValueError(f"need positive time and peak, got {seconds} s and {peak_flops_per_s} FLOP/s")
    return flops / seconds / peak_flops_per_s


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None,
                        repeats: int = 10) -> float:
    """Best FLOP/s of ``size x size`` matmuls in ``dtype`` on ``device`` (8192 on GPUs, 1024 on CPUs)."""
    n = size or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(2):  # warm-up: kernel selection, clocks
        a @ b
    best = 0.0
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def datasheet_peak(device_name: str) -> float | None:
    """Dense bf16 datasheet peak for a known GPU name, else None."""
    for key, peak in DATASHEET_BF16_PEAK.items():
        if key in device_name:
            return peak
    return None
