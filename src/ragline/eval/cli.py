"""`ragline eval ...`: the evaluation commands (registered on the main app in ragline.cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ragline.types import AnswerMode, SearchMode

eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval quality on benchmark datasets.")
console = Console()
err = Console(stderr=True)

_MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")


def _progress(quiet: bool) -> Progress:
    """The eval commands' progress display: indexing first, then one bar per mode."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )


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
        _progress(quiet) as bar,
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


@eval_app.command("answers")
def answers(
    dataset: Annotated[
        Path,
        typer.Option("--dataset", "-d", help="BEIR-layout folder with answers.jsonl (reference answers)"),
    ],
    mode: Annotated[str, typer.Option("--mode", help="generate | extractive | agentic")] = "generate",
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="questions, evenly spaced over the dataset")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="qrels split: qrels/<split>.tsv")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="JSON results file (default: eval-results/<dataset>-answers-<mode>.json)"
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")] = None,
) -> None:
    """Answer a QA dataset's questions and score correctness (SQuAD EM/F1), citations and latency."""
    from ragline.config import load_settings
    from ragline.eval.answers import AnswerEvaluator, load_qa
    from ragline.ingest.pipeline import Progress as IngestProgress

    if mode not in ("generate", "extractive", "agentic"):
        raise typer.BadParameter("--mode must be generate, extractive or agentic")
    settings = load_settings(config)
    ds = load_qa(dataset, split)
    out_path = out or Path("eval-results") / f"{ds.name}-answers-{mode}.json"
    quiet = not sys.stderr.isatty()
    with (
        AnswerEvaluator(ds, settings) as ev,
        _progress(quiet) as bar,
    ):
        ingest_task = bar.add_task("index", total=None, info="")

        def on_ingest(p: IngestProgress) -> None:
            bar.update(
                ingest_task, completed=p.docs_done, total=p.docs_total, info=f"docs · {p.chunks_done} chunks"
            )

        info = ev.prepare_index(on_ingest)
        state = "reused" if info.reused else f"built in {info.ingest_seconds:.0f} s"
        err.print(f"index {info.collection}: {info.indexed_documents} docs, {info.chunks} chunks ({state})")
        n = len(ds.questions(limit))
        q_task = bar.add_task("questions", total=n, info=mode)
        result = ev.evaluate(
            cast(AnswerMode, mode),
            limit=limit,
            on_question=lambda done, total: bar.update(q_task, completed=done),
        )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")

    m = result.metrics()

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    def ms(v: float | int | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    t = Table(title=f"answers · {ds.name} · {mode} · {len(result.questions)} questions")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("what", style="dim")
    t.add_row("exact match", pct(m["exact_match"]), "% SQuAD EM, max over references")
    t.add_row("F1", pct(m["f1"]), "% SQuAD token F1, max over references")
    t.add_row("contains", pct(m["contains"]), "% answers holding a reference")
    t.add_row("not found", pct(m["not_found"]), '% "Not found" answers')
    t.add_row(
        "citation precision",
        pct(m["citation_precision"]),
        f"% of {m['citations_judged']} (sentence, \\[n]) pairs the cited chunk supports",
    )
    t.add_row("cited sentences", pct(m["cited_sentences"]), "% answer sentences with a citation")
    t.add_row("gold in sources", pct(m["gold_in_sources"]), "% questions whose passage was a source")
    lat, ttft = m["latency_ms"], m["ttft_ms"]
    t.add_row("latency P50 / P95", f"{ms(lat['p50'])} / {ms(lat['p95'])}", "ms, Engine.answer")
    t.add_row(
        "TTFT P50 / P95",
        f"{ms(ttft['p50'])} / {ms(ttft['p95'])}",
        f"ms to the first token ({ttft['n']} streamed)",
    )
    console.print(t)
    console.print(
        f"[dim]a citation is supported when >= {result.support_threshold:.0%} of the sentence's "
        "content words are in the cited chunk[/dim]"
    )
    console.print(f"[dim]results written to {out_path}[/dim]")
