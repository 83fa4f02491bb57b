"""Server-Sent Events decoding, line by line (the subset OpenAI-compatible servers send).

Feed the lines of the body (without their line endings); a complete event's data comes
back when its terminating blank line arrives. Comments (``:``) and fields other than
``data`` are ignored; multi-line data is joined with newlines, as the SSE spec says.
"""

from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line; return the event's data when the line ends an event, else None."""
        if not line:
            if not self._data:
                return None
            data = "\n".join(self._data)
            self._data.clear()
            return data
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if field != "data":
            return None
        if sep and value.startswith(" "):
            value = value[1:]
        self._data.append(value)
        return None

    def flush(self) -> str | None:
        """The pending event's data at the end of the body (a server that skipped the last blank line)."""
        return self.feed("")
