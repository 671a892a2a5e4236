"""Shared behaviour of modules that hold a frozen image tokenizer loaded from its own directory."""

from __future__ import annotations


class FrozenImageTokenizer:
    """Mixin (before ``LightningModule``): the tokenizer stays in eval mode, checkpoints keep only
    trained weights, and loading one rebuilds the network first (``configure_model``)."""

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "image_tokenizer", None) is not None:
            self.image_tokenizer.eval()  # frozen: its norms/quantizer stats never update
        return self

    def state_dict(self, *args, **kwargs):
        # the image tokenizer is loaded from its own directory; keep checkpoints to trained weights
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("image_tokenizer.")}

    def check_state_shapes(self, state_dict) -> None:
        """Hook: raise one clear error when ``state_dict`` cannot fit this model."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.configure_model()
        self.check_state_shapes(state_dict)
        own = {k: v for k, v in super().state_dict().items() if k.startswith("image_tokenizer.")}
        return super().load_state_dict({**state_dict, **own}, strict=strict, assign=assign)
