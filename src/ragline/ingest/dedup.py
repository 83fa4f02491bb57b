"""Near-duplicate detection with MinHash LSH (datasketch) over word shingles."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


class NearDuplicateIndex:
    def __init__(self, threshold: float = 0.9, num_perm: int = 128) -> None:
        self._num_perm = num_perm
        self._threshold = threshold
        # LSH banding alone is a soft threshold: set to 0.9 it finds a pair of Jaccard 0.93 only
        # about 6 times in 10, and can report pairs well below 0.9. So it runs lower, as a
        # candidate filter, and each candidate's estimated Jaccard is checked against the threshold.
        self._lsh = MinHashLSH(threshold=max(threshold - 0.2, 0.05), num_perm=num_perm)
        self._sigs: dict[str, npt.NDArray[np.uint64]] = {}
        # the hashing scheme of our own signatures; stored ones are restored with the same one
        self._scheme = MinHash(num_perm=num_perm).scheme

    def signature(self, text: str) -> MinHash:
        m = MinHash(num_perm=self._num_perm)
        m.update_batch(list(shingles(text)))
        return m

    def load(self, items: Iterable[tuple[str, bytes]]) -> None:
        for key, raw in items:
            hv = np.frombuffer(raw, dtype=np.uint64)
            if hv.shape[0] != self._num_perm:
                continue
            self.add(key, MinHash(num_perm=self._num_perm, hashvalues=hv, scheme=self._scheme))

    def find(self, sig: MinHash, exclude: str | None = None) -> str | None:
        """A stored key whose estimated Jaccard similarity with ``sig`` reaches the threshold."""
        hv = np.asarray(sig.hashvalues, dtype=np.uint64)
        for key in self._lsh.query(sig):
            other = self._sigs.get(key)
            if key == exclude or other is None:
                continue
            if np.count_nonzero(other == hv) / self._num_perm >= self._threshold:
                return str(key)
        return None

    def add(self, key: str, sig: MinHash) -> None:
        if key in self._sigs:
            self._lsh.remove(key)
        self._lsh.insert(key, sig)
        self._sigs[key] = np.asarray(sig.hashvalues, dtype=np.uint64)

    def remove(self, key: str) -> None:
        if key in self._sigs:
            self._lsh.remove(key)
            del self._sigs[key]

    @staticmethod
    def to_bytes(sig: MinHash) -> bytes:
        return bytes(np.asarray(sig.hashvalues, dtype=np.uint64).tobytes())
