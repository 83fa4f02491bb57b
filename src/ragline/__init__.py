"""ragline: a self-hostable RAG knowledge service and LLM gateway."""

from ragline.config import Settings, load_settings
from ragline.engine import Engine
from ragline.errors import RaglineError
from ragline.types import Answer, Citation, Hit, IngestReport

__all__ = ["Answer", "Citation", "Engine", "Hit", "IngestReport", "RaglineError", "Settings", "load_settings"]
__version__ = "0.1.0"
