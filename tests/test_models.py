"""Loading user-supplied models from local paths (tested with the models that ship on PyPI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ragline.answer.llm import build_llm, smollm2_path
from ragline.config import EmbedderSettings, LLMSettings, load_settings
from ragline.embed.factory import build_embedder, minilm_paths
from ragline.embed.onnx import OnnxEmbedder
from ragline.errors import ConfigError, ModelLoadError


def test_onnx_dir_embedder_matches_packaged_model(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    model, tokenizer = minilm_paths()
    user_dir = tmp_path / "my-model"
    (user_dir / "onnx").mkdir(parents=True)
    shutil.copy(model, user_dir / "onnx" / "model.onnx")
    shutil.copy(tokenizer, user_dir / "tokenizer.json")
    local = build_embedder(EmbedderSettings(kind="onnx_dir", path=user_dir))
    assert local.name == "my-model"
    assert local.dim == 384
    texts = ["a cat sat on the mat", "stock markets fell sharply"]
    np.testing.assert_allclose(local.embed_documents(texts), embedder.embed_documents(texts), atol=1e-5)
    v = local.embed_queries(["kitten on a rug", "a cat sat on the mat"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > 0.5


def test_embedding_truncates_at_max_tokens(embedder: OnnxEmbedder) -> None:
    long = "word " * 2000
    assert embedder.count_tokens([long])[0] == 2000
    assert embedder.embed_documents([long]).shape == (1, 384)  # cut to 256 pieces, no error


def test_batching_does_not_change_embeddings(embedder: OnnxEmbedder) -> None:
    """Texts of mixed lengths embed the same alone or together (batches follow length and the
    attention budget; padding is masked out of the pooling)."""
    texts = ["short one", "a " * 240 + "long tail", "medium length sentence " * 8, "x", "b " * 120]
    together = embedder.embed_documents(texts)
    alone = np.stack([embedder.embed_documents([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_batches_respect_size_and_attention_budget() -> None:
    from ragline.embed.onnx import ATTENTION_BUDGET, _batches

    lengths = [256, 10, 128, 64, 64, 9, 256, 30, 128, 128, 128, 128, 128]
    batches = _batches(lengths, max_size=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each text once
    for b in batches:
        widest = max(lengths[i] for i in b)
        assert len(b) <= 4 and (len(b) == 1 or len(b) * widest**2 <= ATTENTION_BUDGET)
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    assert [len(b) for b in batches if lengths[b[0]] == 256] == [1, 1]  # full-width texts go alone


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (EmbedderSettings(kind="onnx_dir", path=Path("/nonexistent/model")), "not found"),
        (EmbedderSettings(kind="onnx_dir"), "needs embedder.path"),
    ],
)
def test_bad_embedder_paths_say_what_is_wrong(settings: EmbedderSettings, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        build_embedder(settings)


def test_onnx_dir_without_tokenizer(tmp_path: Path) -> None:
    model, _ = minilm_paths()
    shutil.copy(model, tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        build_embedder(EmbedderSettings(kind="onnx_dir", path=tmp_path))


def test_gguf_from_a_local_path(tmp_path: Path) -> None:
    user_model = tmp_path / "my-model.gguf"
    shutil.copy(smollm2_path(), user_model)
    llm = build_llm(LLMSettings(kind="gguf", path=user_model, n_parallel=1, n_ctx=1024))
    assert llm.name == "my-model"
    out = llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert out.text.strip()
    assert out.completion_tokens > 0 and out.prompt_tokens > 0


def test_bad_gguf_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        build_llm(LLMSettings(kind="gguf", path=tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 10)
    with pytest.raises(ModelLoadError, match="cannot load"):
        build_llm(LLMSettings(kind="gguf", path=junk))


def test_settings_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"chunking\.overlap_tokens"):
        load_settings(data_dir=tmp_path, chunking={"chunk_tokens": 100, "overlap_tokens": 200})
    bad = tmp_path / "bad.yaml"
    bad.write_text("retrieval:\n  mode: fuzzy\n")
    with pytest.raises(ConfigError, match=r"retrieval\.mode"):
        load_settings(bad)
    bad.write_text("retrieval: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
