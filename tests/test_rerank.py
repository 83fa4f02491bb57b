"""The reranking stage's code paths: an ONNX cross-encoder from a local directory and a remote
rerank API. No cross-encoder ships on PyPI, so the ONNX model here is a small graph built by the
test (its score counts a marker word in the passage segment): it exercises the real loading,
pair tokenisation, batching and onnxruntime path, not ranking quality."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from ragline import Engine
from ragline.config import RerankSettings
from ragline.embed.factory import minilm_paths
from ragline.errors import ModelLoadError
from ragline.retrieval.rerank import NoReranker, OnnxCrossEncoder, RemoteReranker, RerankError, build_reranker
from ragline.types import Hit

MARKER = "apple"


def _marker_id() -> int:
    _, tok_path = minilm_paths()
    tid = Tokenizer.from_file(str(tok_path)).token_to_id(MARKER)
    assert tid is not None
    return int(tid)


def write_cross_encoder(directory: Path, two_class: bool = False) -> Path:
    """logit = number of MARKER tokens in the second segment (token_type_ids == 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])
    types = helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2 if two_class else 1])
    nodes = [
        helper.make_node(
            "Constant", [], ["marker"], value=helper.make_tensor("m", TensorProto.INT64, [], [_marker_id()])
        ),
        helper.make_node("Equal", ["input_ids", "marker"], ["is_marker"]),
        helper.make_node("Cast", ["is_marker"], ["is_marker_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["seg_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["is_marker_f", "seg_f"], ["m1"]),
        helper.make_node("Mul", ["m1", "mask_f"], ["m2"]),
        helper.make_node(
            "Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])
        ),
        helper.make_node("ReduceSum", ["m2", "axes"], ["pos"], keepdims=1),
    ]
    if two_class:
        nodes += [
            helper.make_node("Neg", ["pos"], ["neg"]),
            helper.make_node("Concat", ["neg", "pos"], ["logits"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["pos"], ["logits"]))
    graph = helper.make_graph(nodes, "marker-cross-encoder", [ids, mask, types], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    shutil.copy(minilm_paths()[1], directory / "tokenizer.json")
    return directory


def _hit(i: int, text: str) -> Hit:
    return Hit(chunk_id=f"c{i}", score=1.0 - i / 10, text=text, payload={"doc_id": f"d{i}"}, dense_score=0.5)


HITS = [
    _hit(0, "bananas are yellow"),
    _hit(1, "an apple a day, apple pie and apple juice"),
    _hit(2, "one apple"),
    _hit(3, "cherries and plums"),
]


@pytest.mark.parametrize("two_class", [False, True])
def test_onnx_cross_encoder_reorders(tmp_path: Path, two_class: bool) -> None:
    ce = OnnxCrossEncoder(write_cross_encoder(tmp_path / "ce", two_class), batch_size=3)
    # the query's own marker (segment 0) must not count: pairs are encoded as two segments
    out = ce.rerank(f"{MARKER} question", HITS, top_k=3)
    assert [h.chunk_id for h in out] == ["c1", "c2", "c0"]
    assert out[0].score > out[1].score
    assert out[0].dense_score == 0.5  # first-stage scores survive for the relevance gate
    assert ce.rerank("q", [], 3) == []


def test_no_reranker_keeps_order() -> None:
    assert [h.chunk_id for h in NoReranker().rerank("q", HITS, 2)] == ["c0", "c1"]


@pytest.fixture
def rerank_api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    calls: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            calls.append({"body": body, "auth": self.headers.get("authorization")})
            if body["query"] == "fail":
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"boom")
                return
            results = [
                {"index": i, "relevance_score": float(doc.count(MARKER))}
                for i, doc in enumerate(body["documents"])
            ]
            data = json.dumps({"results": sorted(results, key=lambda r: -r["relevance_score"])}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/rerank", calls
    server.shutdown()
    server.server_close()


def test_remote_reranker(rerank_api: tuple[str, list[dict[str, Any]]]) -> None:
    url, calls = rerank_api
    rr = RemoteReranker(url, model="bge-reranker", api_key="k1")
    out = rr.rerank("fruit", HITS, top_k=2)
    assert [h.chunk_id for h in out] == ["c1", "c2"]
    assert calls[0]["body"]["model"] == "bge-reranker"
    assert calls[0]["body"]["documents"][1] == HITS[1].text
    assert calls[0]["auth"] == "Bearer k1"
    with pytest.raises(RerankError, match="500"):
        rr.rerank("fail", HITS, top_k=2)
    rr.close()
    dead = RemoteReranker("http://127.0.0.1:9/rerank", timeout_s=1)
    with pytest.raises(RerankError, match="unreachable"):
        dead.rerank("x", HITS, 1)


def test_build_reranker_validates_settings(tmp_path: Path) -> None:
    assert isinstance(build_reranker(RerankSettings()), NoReranker)
    with pytest.raises(ModelLoadError, match=r"needs rerank\.path"):
        build_reranker(RerankSettings(kind="onnx"))
    with pytest.raises(ModelLoadError, match=r"needs rerank\.url"):
        build_reranker(RerankSettings(kind="remote"))
    with pytest.raises(ModelLoadError, match=r"no \.onnx file"):
        (tmp_path / "empty").mkdir()
        build_reranker(RerankSettings(kind="onnx", path=tmp_path / "empty"))


def test_engine_search_uses_the_reranker(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Orchards grow many fruits. Pears ripen in autumn.")
    (docs / "b.txt").write_text("An apple orchard: apple trees, apple blossoms and apple cider.")
    (docs / "c.txt").write_text("Fruit trees in orchards need pruning in winter.")
    ce_dir = write_cross_encoder(tmp_path / "ce")
    plain = make_engine(data_dir=tmp_path / "d1")
    plain.ingest([docs])
    reranked = make_engine(
        data_dir=tmp_path / "d2", rerank={"kind": "onnx", "path": str(ce_dir), "candidates": 10}
    )
    reranked.ingest([docs])
    hits = reranked.search("pruning orchard fruit trees", top_k=2)
    assert hits[0].doc_id.endswith("b.txt")
    assert len(hits) == 2
    assert plain.search("pruning orchard fruit trees", top_k=1)[0].doc_id.endswith("c.txt")
