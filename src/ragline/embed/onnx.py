"""Sentence embeddings with onnxruntime: any BERT-style ONNX model plus its tokenizer.json.

Mean pooling over the attention mask, then L2 normalisation (what
sentence-transformers does for all-MiniLM-L6-v2 and most of its kin).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from ragline.errors import ModelLoadError


class OnnxEmbedder:
    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        name: str | None = None,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int = 0,
        normalize: bool = True,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> None:
        if not model_path.is_file():
            raise ModelLoadError(f"embedding model not found: {model_path}")
        if not tokenizer_path.is_file():
            raise ModelLoadError(f"tokenizer not found: {tokenizer_path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            tok = Tokenizer.from_file(str(tokenizer_path))
        except Exception as e:  # onnxruntime/tokenizers raise their own types
            raise ModelLoadError(f"cannot load embedding model {model_path}: {e}") from e
        self._inputs = {i.name for i in self._session.get_inputs()}
        out = self._session.get_outputs()[0]
        dim = out.shape[-1]
        if not isinstance(dim, int):
            raise ModelLoadError(f"{model_path}: output dimension is not static ({out.shape})")
        self._dim = dim
        self._max_tokens = max_tokens
        tok.enable_truncation(max_length=max_tokens)
        tok.no_padding()
        self._tok = tok
        # A second tokenizer with no truncation, to measure text that is too long.
        self._counter = Tokenizer.from_file(str(tokenizer_path))
        self._counter.no_truncation()
        self._counter.no_padding()
        self._batch_size = batch_size
        self._normalize = normalize
        self._query_prefix = query_prefix
        self._passage_prefix = passage_prefix
        self._name = name or model_path.parent.name
        self._lock = threading.Lock()  # tokenizers' encode_batch is thread-safe; the session run is too,
        # but two concurrent runs on 2 cores only thrash, so serialise them.

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encs = self._counter.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self._counter.encode(text, add_special_tokens=False)
        return [(int(a), int(b)) for a, b in enc.offsets]

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self._embed([self._passage_prefix + t for t in texts])

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self._embed([self._query_prefix + t for t in texts])

    def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        encs = self._tok.encode_batch(texts)
        lengths = [len(e.ids) for e in encs]
        for idx in _batches(lengths, self._batch_size):
            width = max(lengths[i] for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(encs[i].ids)
                ids[row, :n] = encs[i].ids
                mask[row, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            with self._lock:
                hidden = self._session.run(None, feeds)[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            out[idx] = pooled
        if self._normalize:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out


#: Batch rows x width^2 (word pieces) at most: what the attention matrices of one batch may hold.
#: Long texts embed faster one at a time than in large batches once those matrices leave the CPU
#: caches (MiniLM int8, 2 cores, ~240-piece passages: 25/s one by one, 19.5/s in batches of 32),
#: while short texts gain from batching (60 pieces: 70/s one by one, 88/s in batches of 32).
ATTENTION_BUDGET = 256 * 256


def _batches(lengths: Sequence[int], max_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, so padding is small), each within
    ``max_size`` rows and the attention budget (a single text always makes a batch)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        # sorted ascending: the newcomer is the widest of its batch
        if batch and (len(batch) >= max_size or (len(batch) + 1) * lengths[i] ** 2 > ATTENTION_BUDGET):
            out.append(batch)
            batch = []
        batch.append(i)
    if batch:
        out.append(batch)
    return out
