"""Embedding models behind one interface."""

from ragline.embed.base import Embedder
from ragline.embed.factory import build_embedder
from ragline.embed.onnx import OnnxEmbedder

__all__ = ["Embedder", "OnnxEmbedder", "build_embedder"]
