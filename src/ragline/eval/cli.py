"""`ragline eval ...`: the evaluation commands (registered on the main app in ragline.cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ragline.types import SearchMode

eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval quality on benchmark datasets.")
console = Console()
err = Console(stderr=True)

_MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")


def _modes(mode: str) -> list[SearchMode]:
    if mode == "all":
        return list(_MODES)
    for m in _MODES:
        if m == mode:
            return [m]
    raise typer.BadParameter("--mode must be dense, bm25, hybrid or all")


@eval_app.command("retrieval")
def retrieval(
    dataset: Annotated[
        Path, typer.Option("--dataset", "-d", help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/)")
    ],
    split: Annotated[str, typer.Option("--split", help="qrels split: qrels/<split>.tsv")] = "test",
    mode: Annotated[str, typer.Option("--mode", help="dense | bm25 | hybrid | all")] = "all",
    depth: Annotated[
        int, typer.Option("--depth", min=1, max=1000, help="chunks fetched per query before the doc roll-up")
    ] = 200,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="JSON results file (default: eval-results/<dataset>-<split>.json)"),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")] = None,
) -> None:
    """Index a BEIR dataset (once; re-runs reuse the index) and score dense, BM25 and hybrid retrieval."""
    from ragline.config import load_settings
    from ragline.eval.beir import load_beir
    from ragline.eval.retrieval import RetrievalEvaluator
    from ragline.ingest.pipeline import Progress as IngestProgress

    modes = _modes(mode)
    settings = load_settings(config)
    ds = load_beir(dataset, split)
    out_path = out or Path("eval-results") / f"{ds.name}-{split}.json"
    quiet = not sys.stderr.isatty()
    with (
        RetrievalEvaluator(ds, settings, chunk_depth=depth) as ev,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=err,
            disable=quiet,
        ) as bar,
    ):
        ingest_task = bar.add_task("index", total=None, info="")

        def on_ingest(p: IngestProgress) -> None:
            rate = p.chunks_done / p.elapsed if p.elapsed > 0 else 0.0
            bar.update(
                ingest_task,
                completed=p.docs_done,
                total=p.docs_total,
                info=f"docs · {p.chunks_done} chunks · {rate:.1f} chunks/s",
            )

        info = ev.prepare_index(on_ingest)
        state = "reused" if info.reused else f"built in {info.ingest_seconds:.0f} s"
        if info.empty:
            state += f"; {info.empty} empty documents skipped"
        err.print(f"index {info.collection}: {info.indexed_documents} docs, {info.chunks} chunks ({state})")
        query_task = bar.add_task("queries", total=len(ds.queries) * len(modes), info="")
        offset: dict[str, int] = {m: i * len(ds.queries) for i, m in enumerate(modes)}

        def on_query(m: str, done: int, total: int) -> None:
            bar.update(query_task, completed=offset.get(m, 0) + done, info=m)

        result = ev.evaluate(modes, on_query)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")

    t = Table(title=f"retrieval · {ds.name} / {split} · {result.queries} queries")
    for c in ("dataset", "mode", "nDCG@10", "R@10", "R@100", "MRR@10", "P50 ms", "P95 ms"):
        t.add_column(c, justify="left" if c in ("dataset", "mode") else "right")
    for m in result.modes:
        t.add_row(
            ds.name,
            m.mode,
            f"{m.ndcg_10:.4f}",
            f"{m.recall_10:.4f}",
            f"{m.recall_100:.4f}",
            f"{m.mrr_10:.4f}",
            f"{m.latency_p50_ms:.1f}",
            f"{m.latency_p95_ms:.1f}",
        )
    console.print(t)
    console.print(f"[dim]results written to {out_path}[/dim]")
