"""Host-to-device copies: pinned and non-blocking towards CUDA, plain moves otherwise."""

import torch

from unigen.transfer import to_device


class RecordingCPUTensor:
    """Stands in for a CPU tensor on this CUDA-less machine: records how it was moved."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list = []

    def pin_memory(self):
        self.calls.append("pin_memory")
        return self

    def to(self, device, non_blocking=False):
        self.calls.append(("to", torch.device(device), non_blocking))
        return self


def test_a_copy_to_cuda_is_pinned_and_non_blocking():
    x = RecordingCPUTensor()
    to_device(x, "cuda:1")
    assert x.calls == ["pin_memory", ("to", torch.device("cuda:1"), True)]


def test_other_moves_are_plain_and_none_keeps_the_tensor():
    x = torch.arange(3)
    assert to_device(x, None) is x
    assert to_device(x, "cpu") is x
    fake = RecordingCPUTensor()
    to_device(fake, "meta")
    assert fake.calls == [("to", torch.device("meta"), False)]
