"""Document ids and upload file names that come from clients: normalised, bounded, printable.

An id is NFC-normalised (the same text typed on two systems is the same id), at most
``MAX_DOC_ID_CHARS`` characters, and refused when it holds a control character, a bidirectional
override or isolate (text that displays in another order than it is stored: ``exe.txt`` shown
for ``txt.exe``), an invisible character, an unpaired surrogate, or a word that mixes look-alike
alphabets (Latin with Cyrillic or Greek letters, or with fullwidth or mathematical ones:
``pаypal.pdf`` with a Cyrillic ``а`` displays as another document's name). Words in one alphabet
are fine, whatever it is (``отчёт.pdf``, ``Βιβλίο.txt``). Refused ids raise ValueError with the
reason; the server turns it into a 400.
"""

from __future__ import annotations

import re
import unicodedata

MAX_DOC_ID_CHARS = 512
#: The longest file name most file systems store (bytes of UTF-8).
MAX_FILENAME_BYTES = 255
#: A client's path for an upload, kept as the document's source (display only, never opened).
MAX_SOURCE_CHARS = 1024

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE = frozenset("\u200b\u2060\ufeff\u2028\u2029")
_SEPARATORS = re.compile(r"[\\/]")


_WORD = re.compile(r"[^\W\d_]+")
# alphabets whose letters pass for each other (Unicode's confusables are mostly between these)
_LOOKALIKE = (
    ("FULLWIDTH LATIN", "fullwidth Latin"),
    ("MATHEMATICAL", "mathematical"),
    ("LATIN", "Latin"),
    ("CYRILLIC", "Cyrillic"),
    ("GREEK", "Greek"),
)


class LookalikeId(ValueError):
    """An id refused for look-alike letters only (printable and bounded otherwise)."""


def _alphabet(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    return next((label for prefix, label in _LOOKALIKE if name.startswith(prefix)), None)


def _mixed_word(text: str) -> tuple[str, list[str]] | None:
    """The first word that mixes look-alike alphabets, with them; None when there is none."""
    for word in _WORD.findall(text):
        found = sorted({a for ch in word if (a := _alphabet(ch)) is not None})
        if len(found) > 1:
            return word, found
    return None


def _refused(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI or ch in _INVISIBLE


def normalize_id(value: str, *, what: str = "document id", max_chars: int = MAX_DOC_ID_CHARS) -> str:
    """``value`` in NFC, or ValueError naming what is wrong with it."""
    bad = next((c for c in value if unicodedata.category(c) == "Cs"), None)
    if bad is not None:  # normalize() cannot even encode these
        raise ValueError(f"{what} contains an unpaired surrogate (U+{ord(bad):04X})")
    text = unicodedata.normalize("NFC", value)
    if not text.strip():
        raise ValueError(f"{what} is empty")
    if len(text) > max_chars:
        raise ValueError(f"{what} is longer than {max_chars} characters")
    bad = next((c for c in text if _refused(c)), None)
    if bad is not None:
        raise ValueError(
            f"{what} contains a control, bidirectional or invisible character (U+{ord(bad):04X})"
        )
    mixed = _mixed_word(text)
    if mixed is not None:
        word, alphabets = mixed
        raise LookalikeId(
            f"{what} mixes {' and '.join(alphabets)} letters in one word ({word!r}): look-alike "
            "characters that would display as another name"
        )
    return text


def upload_name(raw: str) -> tuple[str, str]:
    """The (file name, client path) of an upload. The name is the last path component (a file
    is never stored under a client's path), at most 255 bytes. The client path is what the client
    sent, relative ("", "." and ".." parts dropped), kept as the document's source: two files
    with one name from two folders are told apart by it."""
    text = normalize_id(raw, what="file name", max_chars=MAX_SOURCE_CHARS)
    parts = [p for p in _SEPARATORS.split(text) if p.strip() not in ("", ".", "..")]
    name = parts[-1].strip() if parts else ""
    if not name or name.startswith(".") or not _SEPARATORS.split(text)[-1].strip():
        raise ValueError("invalid file name (empty, or starts with '.')")
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise ValueError(f"file name is longer than {MAX_FILENAME_BYTES} bytes")
    return name, "/".join([*parts[:-1], name])
