"""The second stage: rerank fused candidates (e.g. top 50) down to the top k.

Implementations:

- ``NoReranker``: keeps the first-stage order.
- ``OnnxCrossEncoder``: any cross-encoder exported to ONNX (e.g. ms-marco-MiniLM-L-6-v2) plus its
  tokenizer.json, loaded from a local directory; each (query, passage) pair is scored jointly.
- ``RemoteReranker``: a rerank HTTP API in the shape Cohere, Jina, Text-Embeddings-Inference and
  vLLM serve: ``POST {url}`` with ``{"model", "query", "documents", "top_n"}`` answering
  ``{"results": [{"index", "relevance_score"}]}``.

No cross-encoder ships on PyPI, so the quality a reranker adds cannot be measured on this
project's machines; the code paths are tested with a small ONNX graph and a local HTTP server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ragline.config import RerankSettings
from ragline.embed.factory import onnx_dir_paths
from ragline.errors import ModelLoadError, RaglineError
from ragline.gateway.errors import redact
from ragline.optional import require
from ragline.types import Hit

if TYPE_CHECKING:
    import httpx


log = logging.getLogger(__name__)


class RerankError(RaglineError):
    """The reranker failed (model error, remote API error)."""


class Reranker(Protocol):
    def rerank(self, query: str, hits: Sequence[Hit], top_k: int) -> list[Hit]: ...


class NoReranker:
    def rerank(self, query: str, hits: Sequence[Hit], top_k: int) -> list[Hit]:
        return list(hits[:top_k])


def _reordered(hits: Sequence[Hit], scores: Sequence[float], top_k: int) -> list[Hit]:
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))[:top_k]
    # the rerank score becomes the hit's score; dense/bm25 scores are kept for the relevance gate
    return [replace(hits[i], score=float(scores[i])) for i in order]


class OnnxCrossEncoder:
    def __init__(
        self, directory: Path, *, max_tokens: int = 512, batch_size: int = 16, threads: int = 0
    ) -> None:
        model, tokenizer = onnx_dir_paths(directory)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        try:
            self._session = ort.InferenceSession(
                str(model), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self._tok = Tokenizer.from_file(str(tokenizer))
        except Exception as e:  # onnxruntime / tokenizers raise their own types
            raise ModelLoadError(f"cannot load cross-encoder from {directory}: {e}") from e
        self._tok.enable_truncation(max_length=max_tokens)
        self._tok.no_padding()
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._batch = batch_size

    def scores(self, query: str, passages: Sequence[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(passages), self._batch):
            encs = self._tok.encode_batch([(query, p) for p in passages[start : start + self._batch]])
            width = max(len(e.ids) for e in encs)
            ids = np.zeros((len(encs), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, e in enumerate(encs):
                n = len(e.ids)
                ids[row, :n] = e.ids
                mask[row, :n] = 1
                types[row, :n] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = types
            logits = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
            if logits.ndim == 2 and logits.shape[1] == 2:  # two-class heads: the positive class
                col = logits[:, 1] - logits[:, 0]
            else:
                col = logits.reshape(len(encs), -1)[:, 0]
            out.extend(float(x) for x in col)
        return out

    def rerank(self, query: str, hits: Sequence[Hit], top_k: int) -> list[Hit]:
        if not hits:
            return []
        return _reordered(hits, self.scores(query, [h.text for h in hits]), top_k)


class RemoteReranker:
    def __init__(
        self, url: str, *, model: str = "", api_key: str | None = None, timeout_s: float = 10.0
    ) -> None:
        http = require("httpx", extra="rerank", feature="rerank.kind=remote")
        self._http_error: type[Exception] = http.HTTPError
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client = http.Client(timeout=timeout_s, headers=headers)
        self._url = url
        self._model = model

    def rerank(self, query: str, hits: Sequence[Hit], top_k: int) -> list[Hit]:
        if not hits:
            return []
        body: dict[str, Any] = {"query": query, "documents": [h.text for h in hits], "top_n": len(hits)}
        if self._model:
            body["model"] = self._model
        try:
            resp = self._client.post(self._url, json=body)
        except self._http_error as e:
            # the URL and the transport's error go to the log only: errors reach API clients
            log.warning("rerank API %s unreachable: %s", redact(self._url), type(e).__name__)
            raise RerankError("rerank API unreachable") from e
        if resp.status_code != 200:
            log.warning("rerank API %s answered %s: %s", redact(self._url), resp.status_code, resp.text[:200])
            raise RerankError(f"rerank API answered HTTP {resp.status_code}")
        try:
            results = resp.json()["results"]
            scores = [float("-inf")] * len(hits)
            for r in results:
                scores[int(r["index"])] = float(r["relevance_score"])
        except (ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("rerank API %s sent an unexpected body: %s", redact(self._url), resp.text[:200])
            raise RerankError("rerank API sent an unexpected body") from e
        return _reordered(hits, scores, top_k)

    def close(self) -> None:
        self._client.close()


def build_reranker(cfg: RerankSettings) -> Reranker:
    if cfg.kind == "none":
        return NoReranker()
    if cfg.kind == "onnx":
        if cfg.path is None:
            raise ModelLoadError(
                "rerank.kind=onnx needs rerank.path (a directory with model.onnx + tokenizer.json)"
            )
        return OnnxCrossEncoder(cfg.path, max_tokens=cfg.max_tokens)
    if not cfg.url:
        raise ModelLoadError("rerank.kind=remote needs rerank.url")
    key = cfg.api_key.get_secret_value() if cfg.api_key else None
    key = key or (os.environ.get(cfg.api_key_env) if cfg.api_key_env else None)
    return RemoteReranker(cfg.url, model=cfg.model, api_key=key, timeout_s=cfg.timeout_s)
