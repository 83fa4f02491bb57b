"""ragline's exception hierarchy: callers catch these, never backend errors."""


class RaglineError(Exception):
    """Base class of every error ragline raises on purpose."""


class ConfigError(RaglineError):
    """Settings are invalid; the message says what to fix."""


class ParseError(RaglineError):
    """A file could not be turned into text; the message is the per-file reason."""


class CollectionNotFound(RaglineError):
    """The named collection does not exist."""


class CollectionBusy(RaglineError):
    """Another process holds the collection's write lock."""


class DocumentNotFound(RaglineError):
    """No document with that id in the collection."""


class InvalidFilter(RaglineError):
    """A search filter could not be parsed or does not apply."""


class ModelLoadError(RaglineError):
    """An embedding model or LLM could not be loaded from its path."""


class InvalidRequest(RaglineError):
    """A model refused the parameters of a request (the caller's fault, not the server's);
    ``param`` names the request field when one is to blame."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    """The prompt and the requested completion do not fit in the model's context."""


class MissingDependency(RaglineError):
    """An optional feature's library, or a shipped model package, is not installed."""


class LimitExceeded(RaglineError):
    """A configured limit was reached (the message names the setting); retrying will not help."""


class CollectionLimitReached(LimitExceeded):
    """Creating another collection would pass ``collections.max_count`` or ``collections.max_per_tenant``."""


class CollectionUnavailable(RaglineError):
    """A collection cannot be opened now (out of file descriptors, or in use); retry later."""


class IngestCancelled(RaglineError):
    """An ingestion was stopped on request (or by its job's timeout) between two write groups."""
