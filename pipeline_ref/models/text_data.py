"""Real text, offline: a byte-level language-model data set made of the Python standard library's own source.

Every Python installation ships its standard library as ``.py`` files, so this corpus needs no download and no
data set package: the top-level modules of ``sysconfig.get_paths()["stdlib"]``, in sorted order, concatenated
up to ``max_bytes``. Tokens are bytes (vocabulary 256), so the uniform baseline is ln(256) = 5.55 nats per
token and anything a model learns shows up as a loss below it. The last ``validation`` share of the bytes is
held out.

    from pipeline_ref.models import text_data
    corpus = text_data.Corpus.from_stdlib()           # ~1 MB of Python source, a few ms to read
    batches = text_data.Batches(corpus, batch=16, seq_len=64, seed=0)
    inputs, targets = batches(step)                   # (16, 64) int64 each: targets are inputs shifted by one
    inputs, targets = batches.validation(0)

A batch depends only on (seed, split, step): every rank, every schedule and the one-process reference see the
same bytes at the same step, which is what lets a pipelined loss curve equal the one-device curve step for
step. The corpus differs between Python versions; ``Corpus.digest`` names the exact bytes a result came from.
"""
from __future__ import annotations

import hashlib
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

UNIFORM_LOSS = math.log(256)      # cross-entropy of a model that knows nothing about bytes


@dataclass(frozen=True)
class Corpus:
    """The bytes of the corpus, split once into a training and a validation part."""
    train: torch.Tensor           # uint8, 1-d
    validation: torch.Tensor
    files: int
    digest: str                   # sha256 of all the bytes, first 12 hex digits

    @classmethod
    def from_stdlib(cls, max_bytes: int = 1_000_000, validation: float = 0.1) -> "Corpus":
        if max_bytes < 1000 or not 0 < validation < 1:
            raise ValueError(f"Corpus.from_stdlib needs max_bytes >= 1000 and 0 < validation < 1, "
                             f"got {max_bytes} and {validation}")
        root = Path(sysconfig.get_paths()["stdlib"])
        chunks, size, files = [], 0, 0
        for path in sorted(root.glob("*.py")):          # sorted: the same corpus on every run and rank
            data = path.read_bytes()
            chunks.append(data[: max_bytes - size])
            size, files = size + len(chunks[-1]), files + 1
            if size >= max_bytes:
                break
        raw = b"".join(chunks)
        if len(raw) < 1000:
            raise RuntimeError(f"the standard library under {root} gave only {len(raw)} bytes of source")
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        cut = int(len(data) * (1 - validation))
        return cls(data[:cut].clone(), data[cut:].clone(), files, hashlib.sha256(raw).hexdigest()[:12])

    def __repr__(self) -> str:
        return (f"Corpus({len(self.train) + len(self.validation)} bytes of Python source from {self.files} "
                f"files, sha256 {self.digest}: {len(self.train)} train, {len(self.validation)} validation)")


class Batches:
    """Step -> (inputs, targets): ``batch`` windows of ``seq_len`` bytes at random offsets, seeded by the
    step.

    A model factory may return a ``Batches`` in place of its fixed ``(inputs, targets)``: the training loop
    then asks it for step ``s``'s batch at every step (``pipeline_ref.train``), and a one-process reference
    does the same.
    """

    def __init__(self, corpus: Corpus, batch: int = 16, seq_len: int = 64, seed: int = 0):
        if batch < 1 or seq_len < 1:
            raise ValueError(f"Batches needs batch >= 1 and seq_len >= 1, got {batch} and {seq_len}")
        if len(corpus.validation) <= seq_len + 1:
            raise ValueError(f"seq_len {seq_len} is longer than the validation text "
                             f"({len(corpus.validation)} bytes)")
        self.corpus, self.batch, self.seq_len, self.seed = corpus, batch, seq_len, seed

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._windows(self.corpus.train, step, split=0)

    def validation(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``index``-th validation batch (the same for every caller)."""
        return self._windows(self.corpus.validation, index, split=1)

    def _windows(self, data: torch.Tensor, step: int, split: int):
        # One generator per (seed, split, step): a batch never depends on which batches were drawn before it.
        generator = torch.Generator().manual_seed(((self.seed * 2 + split) * 1_000_000_007 + step) % 2 ** 63)
        starts = torch.randint(0, len(data) - self.seq_len - 1, (self.batch,), generator=generator)
        windows = torch.stack([data[s: s + self.seq_len + 1] for s in starts.tolist()]).long()
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def __repr__(self) -> str:
        return f"Batches(batch={self.batch}, seq_len={self.seq_len}, seed={self.seed}, {self.corpus!r})"
