"""``unigen text-tokenizer`` and ``unigen tokenize``: the tokenizer work before training: a text
tokenizer trained on a data set's captions, questions and answers (:func:`build_text_tokenizer`),
and a data set encoded by an image tokenizer into resumable litdata shards (:func:`tokenize_data`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from unigen.command_args import check_device

if TYPE_CHECKING:  # imported where it is used: `unigen --help` does not need it
    from unigen.tokenizers.text import TextTokenizer


# -- text tokenizer ---------------------------------------------------------------------------------
def _text_tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes",
                   help="a registered shard source: shapes | folder | fashion_mnist, or a plugin's "
                        "(docs/extending.md; default shapes)")
    p.add_argument("--root", default=None, help="image folder with metadata.jsonl (--data folder)")
    p.add_argument("--num-samples", type=int, default=20000,
                   help="samples to read text from (shapes; sources without texts(); default 20000)")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="vocabulary size, control tokens included (--task-token ids come on top; default 4096)")
    p.add_argument("--kind", default="wordlevel",
                   help="wordlevel (one id per word) | bpe (subwords) (default wordlevel)")
    p.add_argument("--seed", type=int, default=0,
                   help="data set seed: which scenes/items the texts come from (default 0)")
    p.add_argument("--task-token", action="append", default=[], metavar="NAME",
                   help="add the <NAME> token of a task beyond the built-in six (repeatable; "
                        "docs/extending.md, \"A task\")")
    p.add_argument("--out", required=True, help="output directory")


Wrap = Callable[[Iterable[int]], Iterable[int]]  # wraps the item indices read (a progress bar)


def _shapes_texts(root: str | None, num_samples: int, seed: int, items: Wrap) -> list[str]:
    from unigen.data.shapes import corpus, vocabulary_words

    # the exhaustive word list guarantees every template word is in the vocabulary
    return [*corpus("train", num_samples, seed, items), " ".join(vocabulary_words())]


def _fashion_mnist_texts(root: str | None, num_samples: int, seed: int, items: Wrap) -> list[str]:
    from unigen.data.fashion_mnist import CAPTION_TEMPLATES, CLASS_NAMES, QUESTION, caption_for

    captions = [caption_for(label, t) for label in range(len(CLASS_NAMES))
                for t in range(len(CAPTION_TEMPLATES))]
    return [*captions, QUESTION, *CLASS_NAMES]


# built-in sources whose text is known without building the data set (rendering the shapes world,
# reading the Fashion-MNIST files)
_TEXTS_WITHOUT_IMAGES: dict[str, Callable[[str | None, int, int, Wrap], list[str]]] = {
    "shapes": _shapes_texts, "fashion_mnist": _fashion_mnist_texts}
TEXT_FIELDS = ("caption", "description", "question", "answer")


def text_corpus(data: str, root: str | None = None, num_samples: int = 20000, seed: int = 0,
                progress: bool = False) -> list[str]:
    """All text of a data set: captions, questions and answers.  ``data`` is any source of
    :data:`unigen.data.shards.SHARD_SOURCES` (the ``unigen tokenize --data`` names, plugins'
    included): the corpus is its data set's ``texts()`` when it has one, else the non-empty
    ``caption``, ``description``, ``question`` and ``answer`` of its first ``num_samples`` items.
    ``progress``: a bar over the items read (rendering 20,000 shapes scenes takes ~20 s)."""
    from functools import partial

    from tqdm.auto import tqdm

    from unigen.data.shards import SHARD_SOURCES

    items: Wrap = partial(tqdm, desc=f"reading {data} texts", unit="item", disable=not progress,
                          leave=False)

    try:
        source = SHARD_SOURCES.get(data)
    except KeyError as err:
        raise ValueError(f"--data: {err.args[0]}") from None
    if data in _TEXTS_WITHOUT_IMAGES:
        return _TEXTS_WITHOUT_IMAGES[data](root, num_samples, seed, items)
    options = {"seed": seed, **({"root": root} if root is not None else {})}
    dataset = source(**options)
    if callable(getattr(dataset, "texts", None)):
        return list(dataset.texts())
    texts = []
    for i in items(range(min(num_samples, len(dataset)))):
        item = dataset[i]
        if not isinstance(item, dict):
            raise ValueError(f"--data {data}: items must be dicts with text fields "
                             f"({', '.join(TEXT_FIELDS)}), got {type(item).__name__}")
        texts += [item[k] for k in TEXT_FIELDS if isinstance(item.get(k), str) and item[k]]
    if not texts:
        raise ValueError(f"--data {data}: its items hold no text ({', '.join(TEXT_FIELDS)})")
    return texts


def build_text_tokenizer(data: str, out: str, root: str | None = None, num_samples: int = 20000,
                         vocab_size: int = 4096, kind: str = "wordlevel", seed: int = 0,
                         task_tokens: Sequence[str] = (), progress: bool = False) -> TextTokenizer:
    """Train a ``kind`` text tokenizer on :func:`text_corpus` of ``data`` and save it to ``out``
    (``task_tokens``: the ``<NAME>`` tokens of tasks beyond the built-in ones); returns it."""
    import sys

    from unigen.tokenizers.text import TextTokenizer

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {num_samples}")
    texts = text_corpus(data, root, num_samples, seed, progress)
    if progress:
        print(f"training a {kind} text tokenizer on {len(texts)} texts", file=sys.stderr)
    tok = TextTokenizer.train(texts, vocab_size=vocab_size, kind=kind, task_tokens=task_tokens)
    tok.save_pretrained(out)
    return tok


def _text_tokenizer(args: argparse.Namespace) -> None:
    tok = build_text_tokenizer(args.data, args.out, args.root, args.num_samples, args.vocab_size,
                               args.kind, args.seed, args.task_token, progress=True)
    extra = f" (task tokens added: {', '.join(tok.extra_tasks)})" if tok.extra_tasks else ""
    print(f"wrote a {tok.kind} text tokenizer with {tok.vocab_size} ids to {args.out}{extra}")


# -- tokenize (pretokenized shards) -----------------------------------------------------------------
def _tokenize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True,
                   help="image tokenizer directory (or a pipeline directory: its image_tokenizer/)")
    p.add_argument("--data", required=True, help="shapes | folder | fashion_mnist")
    p.add_argument("--root", default=None, help="image folder (--data folder) or IDX folder (fashion_mnist)")
    p.add_argument("--split", default=None, help="shapes: train|val|heldout; fashion_mnist: train|test")
    p.add_argument("--image-size", type=int, default=None, help="default: 64 (shapes, folder), 32 (fashion_mnist)")
    p.add_argument("--num-samples", type=int, default=None, help="first N samples (shapes default 10000)")
    p.add_argument("--seed", type=int, default=0, help="data set seed (shapes scenes, fashion_mnist subset)")
    p.add_argument("--shard-size", type=int, default=4096, help="samples per shard (one litdata chunk)")
    p.add_argument("--batch-size", type=int, default=64, help="images encoded at once")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", required=True, help="shard directory (rerun the same command to resume)")
    p.add_argument("--grid", default=None, help="reconstruction grid PNG (default OUT/reconstructions.png)")


def image_tokenizer_path(tokenizer: str | Path) -> Path:
    """What a ``--tokenizer`` names: an image tokenizer directory, or a pipeline directory (its
    ``pipeline.json`` says so), whose tokenizer is its ``image_tokenizer/`` (``tokenize``,
    ``reconstruct``)."""
    path = Path(tokenizer)
    if (path / "pipeline.json").is_file():
        return path / "image_tokenizer"
    return path


def tokenize_data(tokenizer: str, data: str, out: str, root: str | None = None,
                  split: str | None = None, image_size: int | None = None,
                  num_samples: int | None = None, seed: int = 0, shard_size: int = 4096,
                  batch_size: int = 64, num_workers: int = 0, device: str = "cpu",
                  grid: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode a data set with an image tokenizer into litdata shards (:mod:`unigen.data.shards`)."""
    import torch

    from unigen.data.shards import SHARD_SOURCES, write_shards
    from unigen.tokenizers.base import ImageTokenizer

    path = image_tokenizer_path(tokenizer)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = ImageTokenizer.from_pretrained(path, map_location=device)
    given = {"root": root, "split": split, "image_size": image_size, "num_samples": num_samples}
    options = {"seed": seed, **{k: v for k, v in given.items() if v is not None}}
    dataset = SHARD_SOURCES.get(data)(**options)
    size = int(dataset[0]["image"].shape[-1])
    source = {"data": data, **options, "image_size": size}
    return write_shards(dataset, tok, out, size, shard_size, batch_size, num_workers, source,
                        grid, progress=progress)


def _tokenize(args: argparse.Namespace) -> None:
    check_device(args.device, allow_auto=True)
    m = tokenize_data(args.tokenizer, args.data, args.out, args.root, args.split, args.image_size,
                      args.num_samples, args.seed, args.shard_size, args.batch_size,
                      args.num_workers, args.device, args.grid)
    h, w = m["grid"]
    print(f"wrote {m['num_samples']} samples ({h}x{w} codes of {m['tokenizer']['codebook_size']}) "
          f"in {m['num_shards']} shards to {args.out}; look at {args.grid or Path(args.out) / 'reconstructions.png'}")
