"""Shared behaviour of modules that hold a frozen image tokenizer loaded from its own directory."""

from __future__ import annotations

import warnings

from lightning.pytorch import Callback
from lightning.pytorch.utilities.warnings import PossibleUserWarning


class _RestoreWarningsOnError(Callback):
    """A fit that fails before training starts (e.g. in the sanity check) never reaches the
    module's hooks that lift the eval-mode warning filter; ``on_exception`` is a callback-only
    hook, so the module hands Lightning this callback to lift it there too."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        restore = getattr(pl_module, "_restore_warnings", None)
        if restore is not None:
            restore()


class FrozenImageTokenizer:
    """Mixin (before ``LightningModule``): the tokenizer stays in eval mode, checkpoints keep only
    trained weights, and loading one rebuilds the network first (``configure_model``)."""

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "image_tokenizer", None) is not None:
            self.image_tokenizer.eval()  # frozen: its norms/quantizer stats never update
        return self

    def on_fit_start(self) -> None:
        # Lightning warns about every module in eval mode when training starts; the tokenizer's are
        # so by design.  Hide the warning only for exactly their count, so that any other module
        # left in eval mode still makes Lightning warn (the count then differs).
        super().on_fit_start()
        tokenizer = getattr(self, "image_tokenizer", None)
        if tokenizer is not None:
            count = sum(1 for _ in tokenizer.modules())
            self._eval_mode_warnings = warnings.catch_warnings()
            self._eval_mode_warnings.__enter__()
            warnings.filterwarnings(
                "ignore", message=rf"Found {count} module\(s\) in eval mode at the start of training",
                category=PossibleUserWarning)

    def on_train_start(self) -> None:
        super().on_train_start()
        self._restore_warnings()

    def on_fit_end(self) -> None:
        super().on_fit_end()
        self._restore_warnings()  # fit may end without training (max_steps already reached)

    def configure_callbacks(self):
        callbacks = super().configure_callbacks()
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        return [*callbacks, _RestoreWarningsOnError()]

    def _restore_warnings(self) -> None:
        context = self.__dict__.pop("_eval_mode_warnings", None)
        if context is not None:
            context.__exit__(None, None, None)

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
