"""A BEIR-layout dataset on disk: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

- ``corpus.jsonl``: one ``{"_id", "title", "text"}`` object per line (read with the same JSONL
  parser ``ragline ingest`` uses, so the eval indexes exactly what a user's ingest would).
- ``queries.jsonl``: one ``{"_id", "text"}`` object per line.
- ``qrels/<split>.tsv``: a header line, then ``query-id <TAB> corpus-id <TAB> score``.

As BEIR's GenericDataLoader does, only the queries whose id appears in the split's qrels are
evaluated (``queries.jsonl`` often holds the queries of every split).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ragline.errors import ConfigError, ParseError
from ragline.ingest.parsers import iter_jsonl
from ragline.types import ParsedDocument

#: query id -> corpus id -> graded relevance (0 = judged not relevant).
Qrels = dict[str, dict[str, int]]


@dataclass(slots=True)
class BeirDataset:
    root: Path
    split: str
    #: The evaluated queries (those present in the split's qrels), query id -> text.
    queries: dict[str, str]
    qrels: Qrels
    #: Documents of the corpus skipped by the last ``iter_corpus`` for having no text.
    empty_documents: int = 0

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"

    def corpus_size(self) -> int:
        """Number of documents in corpus.jsonl (non-blank lines)."""
        with self.corpus_path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())

    def iter_corpus(self) -> Iterator[ParsedDocument]:
        """The corpus as ragline documents (doc_id = BEIR ``_id``); a malformed line is an error.

        A document with neither title nor text (Cranfield has two) cannot be indexed: it is
        skipped and counted in ``empty_documents``; judged relevant, it scores as a miss.
        """
        self.empty_documents = 0
        for item in iter_jsonl(self.corpus_path):
            if isinstance(item, ParseError):
                if str(item).endswith(" has no text"):
                    self.empty_documents += 1
                    continue
                raise ConfigError(f"{self.corpus_path}: {item}")
            yield item


def load_qrels(path: Path) -> Qrels:
    """Read a BEIR qrels TSV (header line first). Scores must be integers."""
    qrels: Qrels = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read qrels file {path}: {e.strerror or e}") from e
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if lineno == 1 and not _is_int(parts[-1]):
            continue  # the header: query-id corpus-id score
        if len(parts) != 3 or not _is_int(parts[2]):
            raise ConfigError(f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {line!r}")
        qid, did, score = parts[0].strip(), parts[1].strip(), int(parts[2])
        qrels.setdefault(qid, {})[did] = score
    if not qrels:
        raise ConfigError(f"qrels file {path} holds no judgments")
    return qrels


def load_queries(path: Path, wanted: set[str] | None = None) -> dict[str, str]:
    """Read queries.jsonl; with ``wanted``, keep only those ids."""
    out: dict[str, str] = {}
    try:
        fh = path.open("rb")
    except OSError as e:
        raise ConfigError(f"cannot read queries file {path}: {e.strerror or e}") from e
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}:{lineno}: invalid JSON ({e})") from e
            if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
                raise ConfigError(f"{path}:{lineno}: expected an object with '_id' and 'text'")
            qid = str(obj["_id"])
            if wanted is None or qid in wanted:
                out[qid] = obj["text"]
    return out


def load_beir(root: str | Path, split: str = "test") -> BeirDataset:
    """Load a BEIR-layout dataset folder for one qrels split."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"dataset folder not found: {root}")
    corpus = root / "corpus.jsonl"
    if not corpus.is_file():
        raise ConfigError(f"{root} has no corpus.jsonl (expected a BEIR-layout folder)")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise ConfigError(f"{root} has no qrels/{split}.tsv (splits available: {available or 'none'})")
    qrels = load_qrels(qrels_path)
    queries = load_queries(root / "queries.jsonl", set(qrels))
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise ConfigError(
            f"{len(missing)} query ids of qrels/{split}.tsv are not in queries.jsonl (first: {missing[0]!r})"
        )
    # keep qrels and queries in the same (qrels file) order
    queries = {qid: queries[qid] for qid in qrels}
    return BeirDataset(root=root, split=split, queries=queries, qrels=qrels)


def _is_int(s: str) -> bool:
    try:
        int(s.strip())
    except ValueError:
        return False
    return True
