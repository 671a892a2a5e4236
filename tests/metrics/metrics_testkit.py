"""Tiny synthetic image-caption data for the metrics tests: a colored block on the left or right
of a 32x32 black image, captioned accordingly (and labelled by color)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

COLORS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
          "white": (1.0, 1.0, 1.0)}
SIDES = ("left", "right")


class Blocks(Dataset):
    def __init__(self, n: int, size: int = 32) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        names = list(COLORS)
        color, side = names[i % len(names)], SIDES[(i // len(names)) % 2]
        s = self.size
        img = torch.zeros(3, s, s)
        x0 = s // 16 if side == "left" else s // 2 + s // 16
        img[:, s // 4:3 * s // 4, x0:x0 + 3 * s // 8] = torch.tensor(COLORS[color])[:, None, None]
        return {"image": img, "caption": f"A {color} block on the {side}.", "label": i % len(names)}

    def texts(self) -> list[str]:
        return [f"A {c} block on the {s}." for c in COLORS for s in SIDES]


class BlocksData(L.LightningDataModule):
    def __init__(self, num_train: int = 64, num_val: int = 16, batch_size: int = 16) -> None:
        super().__init__()
        self.num_train, self.num_val, self.batch_size = num_train, num_val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Blocks(self.num_train), batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Blocks(self.num_val), batch_size=self.batch_size)


def batch(n: int) -> dict:
    items = [Blocks(n)[i] for i in range(n)]
    return {"image": torch.stack([x["image"] for x in items]),
            "caption": [x["caption"] for x in items],
            "label": torch.tensor([x["label"] for x in items])}


def fast_trainer(max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     accelerator="cpu", devices=1, **kwargs)
