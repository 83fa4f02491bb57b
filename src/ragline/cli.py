"""The `ragline` command line: a thin layer over Engine (no logic of its own)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ragline.access.cli import keys_app, tenants_app
from ragline.access.cli import spend as spend_command
from ragline.config import load_settings
from ragline.engine import Engine
from ragline.errors import RaglineError
from ragline.eval.cli import eval_app
from ragline.ingest.pipeline import Progress as IngestProgress
from ragline.types import Answer, IngestReport

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="ragline: cited answers from your documents."
)
app.add_typer(eval_app, name="eval")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.command("spend")(spend_command)
config_app = typer.Typer(no_args_is_help=True, help="Settings: the example file and the effective settings.")
app.add_typer(config_app, name="config")
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")]
CollectionOpt = Annotated[str | None, typer.Option("--collection", help="collection name")]


def _engine(config: Path | None) -> Engine:
    return Engine(load_settings(config))


def _parse_meta(items: list[str] | None) -> dict[str, Any]:
    from ragline.index.filters import coerce

    meta: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--meta expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        meta[k.strip()] = coerce(v.strip())
    return meta


def _print_report(report: IngestReport) -> None:
    t = Table(title="ingest summary", show_header=False)
    for k, v in (
        ("added", report.added),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("duplicates (exact)", report.duplicates),
        ("duplicates (near)", report.near_duplicates),
        ("failed", len(report.failed)),
        ("chunks", report.chunks),
        ("seconds", f"{report.seconds:.2f}"),
        ("chunks/s", f"{report.chunks_per_second:.1f}"),
    ):
        t.add_row(k, str(v))
    console.print(t)
    for f in report.failed:
        # escape: a path like "draft [v2].txt" is not markup; soft_wrap: one line per file, never folded
        console.print(f"[red]failed[/red] {escape(f.path)}: {escape(f.reason)}", soft_wrap=True)
    for f in report.warnings:  # ingested in part (cut at a configured limit)
        console.print(f"[yellow]truncated[/yellow] {escape(f.path)}: {escape(f.reason)}", soft_wrap=True)


@app.command()
def ingest(
    # readable=False: an unreadable path is reported with the others by the ingestor, not a usage error
    paths: Annotated[list[Path], typer.Argument(help="files or directories", readable=False)],
    collection: CollectionOpt = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="key=value added to every chunk")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    config: ConfigOpt = None,
) -> None:
    """Ingest files and folders (PDF, HTML, Markdown, text, DOCX, JSONL)."""
    metadata = _parse_meta(meta)
    with _engine(config) as engine:
        quiet = as_json or not sys.stderr.isatty()
        with Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("docs · {task.fields[chunks]} chunks · {task.fields[rate]} chunks/s"),
            TimeElapsedColumn(),
            console=err,
            disable=quiet,
        ) as bar:
            task = bar.add_task("ingest", total=None, chunks=0, rate="0.0")

            def on_progress(p: IngestProgress) -> None:
                rate = p.chunks_done / p.elapsed if p.elapsed > 0 else 0.0
                bar.update(
                    task, completed=p.docs_done, total=p.docs_total, chunks=p.chunks_done, rate=f"{rate:.1f}"
                )

            report = engine.ingest(
                [str(p) for p in paths], collection=collection, metadata=metadata, progress=on_progress
            )
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        _print_report(report)
    if report.failed:
        raise typer.Exit(code=2)


@app.command()
def search(
    query: str,
    collection: CollectionOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000)] = 5,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="field=value, field>=n, ...")
    ] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="hybrid | dense | bm25")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
) -> None:
    """Search a collection."""
    if mode is not None and mode not in ("hybrid", "dense", "bm25"):
        raise typer.BadParameter("--mode must be hybrid, dense or bm25")
    with _engine(config) as engine:
        hits = engine.search(query, collection=collection, top_k=top_k, mode=mode, filters=filter_)  # type: ignore[arg-type]
    if as_json:
        console.print_json(
            json.dumps(
                [{"score": h.score, "chunk_id": h.chunk_id, "text": h.text, **h.payload} for h in hits]
            )
        )
        return
    if not hits:
        console.print("no results")
        return
    t = Table(show_lines=True)
    for col in ("#", "score", "document", "section / page", "snippet"):
        t.add_column(col, overflow="fold")
    for i, h in enumerate(hits, start=1):
        where = " / ".join(x for x in (h.section, f"p. {h.page}" if h.page is not None else "") if x)
        doc = f"{h.title}\n[dim]{h.doc_id}[/dim]"
        t.add_row(str(i), f"{h.score:.4f}", doc, where, h.text[:300].replace("\n", " "))
    console.print(t)


def _print_answer(answer: Answer, streamed: bool) -> None:
    if not streamed:
        console.print(answer.text)
    else:
        console.print()
    if answer.citations:
        console.print("\n[bold]Sources[/bold]")
        for c in answer.citations:
            where = ", ".join(x for x in (c.section, f"page {c.page}" if c.page is not None else "") if x)
            mark = " (matched)" if c.inferred else ""
            console.print(
                f"  [{c.number}] {c.title}{' — ' + where if where else ''}{mark}\n      [dim]{c.source}[/dim]"
            )
    u = answer.usage
    console.print(
        f"\n[dim]retrieval {u.retrieval_ms:.0f} ms · generation {u.generation_ms:.0f} ms · "
        f"tokens {u.prompt_tokens} in / {u.completion_tokens} out[/dim]"
    )


@app.command()
def ask(
    question: str,
    collection: CollectionOpt = None,
    mode: Annotated[str | None, typer.Option("--mode", help="generate | extractive | agentic")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, max=50)] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter", "-f")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="print the answer when it is complete")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Answer a question from a collection, with citations."""
    if mode is not None and mode not in ("generate", "extractive", "agentic"):
        raise typer.BadParameter("--mode must be generate, extractive or agentic")
    stream = not (no_stream or as_json)
    streamed = False

    def on_token(tok: str) -> None:
        nonlocal streamed
        streamed = True
        sys.stdout.write(tok)
        sys.stdout.flush()

    with _engine(config) as engine:
        answer = engine.answer(
            question,
            collection=collection,
            mode=mode,  # type: ignore[arg-type]
            top_k=top_k,
            filters=filter_,
            on_token=on_token if stream else None,
        )
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2))
        return
    if streamed and answer.text and answer.found:
        # the streamed text lacks the citations matched after generation: show the final form
        console.print("\n\n[bold]Answer[/bold]")
        console.print(answer.text)
        _print_answer(answer, streamed=True)
    else:
        if streamed:
            console.print()
        _print_answer(answer, streamed=False)


@app.command("list")
def list_(
    collection: CollectionOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: Annotated[int, typer.Option(min=1)] = 1000,
    config: ConfigOpt = None,
) -> None:
    """List the documents of a collection."""
    with _engine(config) as engine:
        docs = engine.documents(collection=collection, limit=limit)
    if as_json:
        print(json.dumps([d.public() for d in docs], indent=2))
        return
    t = Table()
    for c in ("doc_id", "title", "chunks", "ingested"):
        t.add_column(c, overflow="fold")
    for d in docs:
        t.add_row(d.doc_id, d.title, str(d.n_chunks), d.ingested_at[:19])
    console.print(t)


@app.command()
def delete(doc_id: str, collection: CollectionOpt = None, config: ConfigOpt = None) -> None:
    """Delete a document and every one of its chunks."""
    with _engine(config) as engine:
        rec = engine.delete(doc_id, collection=collection)
    console.print(f"deleted {rec.doc_id} ({rec.n_chunks} chunks)")


@app.command()
def collections(config: ConfigOpt = None) -> None:
    """List collections."""
    with _engine(config) as engine:
        for name in engine.collections():
            console.print(name)


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address (default from settings: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default from settings: 8000)")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="worker processes (only 1 is accepted: one process per data_dir)")
    ] = 1,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="log every request (costs CPU per request)")
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="serve with no API keys on an address other than loopback"),
    ] = False,
) -> None:
    """Serve the OpenAI-compatible API (chat, embeddings, models, RAG via model rag/<collection>)."""
    from ragline.server.run import serve as run_server

    if workers != 1:  # checked first: nothing is read or opened for a command that cannot run
        raise typer.BadParameter(
            "the embedded engine is opened by one process; run one worker per data_dir",
            param_hint="--workers",
        )
    settings = load_settings(config)
    run_server(settings, host=host, port=port, access_log=access_log, insecure=insecure)


@config_app.command("example")
def config_example(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to this file instead of stdout")
    ] = None,
) -> None:
    """Print every setting with its default and description (the source of ragline.example.yaml)."""
    from ragline.config_render import example_yaml

    text = example_yaml()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of YAML")] = False,
) -> None:
    """Print the effective settings (file + environment + defaults), secrets masked."""
    from ragline.config_render import effective_settings, effective_yaml

    settings = load_settings(config)
    if as_json:
        sys.stdout.write(json.dumps(effective_settings(settings), indent=2) + "\n")
    else:
        sys.stdout.write(effective_yaml(settings))


def main() -> None:
    try:
        app()
    except (RaglineError, ValueError) as e:
        # soft_wrap: the message keeps its own lines, never folded at the terminal's width
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
