"""Uploads (documents as JSON, one file as multipart) and the jobs that ingest them.

Every upload is checked before it is accepted: the collection name (and the collection cap when
it would be created), each document id (``ingest/ids.py``), the file name (at most 255 bytes, no
control or bidirectional characters), the file size. The upload then runs as a job
(``server/jobs.py``): bounded in number, cancellable (``POST /v1/jobs/{id}/cancel``), and its
error is a reason, never a library's internals. The job parses the file in a worker process
(``ingest/isolation.py``, within ``ingest.parse_memory_bytes`` and ``ingest.parse_timeout_s``),
never in the server's.

Names: a file's document id is its ``doc_id`` field or its file name; the path the client sent
with it (``a/report.pdf``) is kept as the document's source. Uploading a file whose name is
already the id of a document from another source is refused with 409 unless the request sets
``replace=true`` (or gives a ``doc_id``): two files called ``report.pdf`` from two folders do not
silently replace each other. The same file uploaded again (same source) updates the document.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field, field_validator

from ragline.collection import TENANT_SEP
from ragline.engine import Engine
from ragline.errors import InvalidRequest, ParseError
from ragline.ingest.cleaning import clean_text
from ragline.ingest.ids import MAX_DOC_ID_CHARS, normalize_id, upload_name
from ragline.ingest.isolation import parse_file_isolated
from ragline.ingest.parsers import ParseLimits, supported_suffixes
from ragline.server.caller import Caller, CallerDep
from ragline.server.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, TooManyRequests
from ragline.server.jobs import Job, JobRefused, JobStore, ProgressFn, StopFn, bounded_report
from ragline.server.protocol import Text
from ragline.types import FileFailure, IngestReport, ParsedDocument, Section


class TextDocument(BaseModel):
    id: Text = Field(min_length=1, max_length=MAX_DOC_ID_CHARS)
    text: Text = Field(min_length=1)
    title: Text = ""
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return normalize_id(v)


class UploadDocuments(BaseModel):
    documents: list[TextDocument] = Field(min_length=1)


def submit(jobs: JobStore, caller: Caller, work: Any, cleanup: Any = None) -> Job:
    """Submit an ingest job; a full queue is a 429 with Retry-After (and the upload is cleaned up)."""
    try:
        return jobs.submit("ingest", work, owner=caller.key_id, tenant=caller.tenant, cleanup=cleanup)
    except JobRefused as e:
        if cleanup is not None:
            cleanup()
        raise TooManyRequests(e.message, retry_after=e.retry_after, code=e.code) from None


def _conflict(engine: Engine, collection: str, doc_id: str, source: str) -> str | None:
    """Why storing ``doc_id`` from ``source`` would replace another file's document, or None."""
    existing = engine.document(doc_id, collection=collection)
    if existing is None or existing.source == source:
        return None
    return (
        f"a document with id {doc_id!r} from another source already exists in collection "
        f"{collection.rpartition(TENANT_SEP)[2]!r}; send replace=true to replace it, or a doc_id to keep both"
    )


def _outcome(report: IngestReport) -> dict[str, Any]:
    """The job's result; a file none of whose documents could be ingested fails the job."""
    ok = report.added + report.updated + report.unchanged + report.duplicates + report.near_duplicates
    if report.failed and ok == 0:
        raise ParseError(report.failed[0].reason)
    return bounded_report(report.to_dict())


def build_upload_router(engine: Engine, jobs: JobStore, max_upload_bytes: int) -> APIRouter:
    """The routes, without a prefix: ``knowledge.build_router`` includes them under ``/v1``."""
    r = APIRouter()

    async def _can_store(caller: Caller, name: str) -> str:
        stored = caller.tenancy.stored(name)
        await asyncio.to_thread(engine.check_can_create, stored)
        return stored

    @r.post("/collections/{name}/documents", status_code=202)
    async def upload_documents(name: str, body: UploadDocuments, caller: CallerDep) -> dict[str, Any]:
        name = await _can_store(caller, name)
        docs = [
            ParsedDocument(
                doc_id=d.id,
                source=f"api:{d.id}",
                title=clean_text(d.title),
                sections=[Section(clean_text(d.text))],
                metadata=dict(d.metadata),
            )
            for d in body.documents
        ]

        def work(progress: ProgressFn, should_stop: StopFn) -> dict[str, Any]:
            report = engine.ingest_documents(
                docs, collection=name, progress=progress, total=len(docs), should_stop=should_stop
            )
            return bounded_report(report.to_dict())

        return submit(jobs, caller, work).to_dict()

    @r.post("/collections/{name}/files", status_code=202)
    async def upload_file(
        name: str,
        caller: CallerDep,
        file: Annotated[UploadFile, File()],
        doc_id: Annotated[str | None, Form(max_length=MAX_DOC_ID_CHARS)] = None,
        replace: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        """Upload one file (any supported format); its id is ``doc_id`` or the file name."""
        try:
            filename, source = upload_name(file.filename or "")
        except ValueError as e:
            raise BadRequest(str(e), param="file") from None
        suffix = Path(filename).suffix.lower()
        if suffix not in supported_suffixes():
            raise BadRequest(f"unsupported file type {suffix or '(none)'}", param="file")
        try:
            ident = normalize_id(doc_id, what="doc_id") if doc_id is not None else filename
        except ValueError as e:
            raise BadRequest(str(e), param="doc_id") from None
        name = await _can_store(caller, name)
        check_conflict = doc_id is None and not replace and suffix != ".jsonl"
        if check_conflict and (why := await asyncio.to_thread(_conflict, engine, name, ident, source)):
            raise Conflict(why, param="file", code="document_exists")
        limit = min(max_upload_bytes, engine.settings.ingest.max_file_bytes)
        setting = "ingest.max_file_bytes" if limit < max_upload_bytes else "server.max_body_bytes"
        tmpdir = Path(tempfile.mkdtemp(prefix="ragline-upload-"))
        target = tmpdir / filename

        def cleanup() -> None:
            shutil.rmtree(tmpdir, ignore_errors=True)

        try:
            size = 0
            with target.open("wb") as fh:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"file exceeds {limit} bytes ({setting})", param="file")
                    fh.write(chunk)
        except BaseException:
            cleanup()  # nothing is left behind by a refused upload
            raise

        def work(progress: ProgressFn, should_stop: StopFn) -> dict[str, Any]:
            # parsed in a worker process (ingest/isolation.py): a hostile file's memory, CPU and
            # garbage-collection pauses are not the server's, and a cancel kills the parse
            ingest = engine.settings.ingest
            docs = parse_file_isolated(target, ident, ParseLimits.from_settings(ingest), ingest, should_stop)
            failed: list[FileFailure] = []
            kept: list[ParsedDocument] = []
            for d in docs:
                d.source = source if d.doc_id == ident else d.source.replace(str(target), source)
                try:  # ids a JSONL file carries, like those of the JSON API
                    d.doc_id = normalize_id(d.doc_id)
                except ValueError as e:
                    failed.append(FileFailure(d.source, str(e)))
                    continue
                kept.append(d)
            if check_conflict and (why := _conflict(engine, name, ident, source)):
                raise InvalidRequest(why)  # another upload of the same name got in first
            report = engine.ingest_documents(
                kept, collection=name, progress=progress, total=len(kept), should_stop=should_stop
            )
            report.failed[:0] = failed
            return _outcome(report)

        return submit(jobs, caller, work, cleanup).to_dict()

    @r.get("/jobs/{job_id}")
    async def get_job(job_id: str, caller: CallerDep) -> dict[str, Any]:
        job = jobs.get(job_id, caller.tenant)
        if job is None:
            raise NotFound(f"no job {job_id!r}", param="job_id")
        return job.to_dict()

    @r.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, caller: CallerDep) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one at its next stop point (its status
        is ``cancelling`` until then). A job that already succeeded or failed is a 409."""
        job = jobs.cancel(job_id, caller.tenant)
        if job is None:
            raise NotFound(f"no job {job_id!r}", param="job_id")
        if job.status in ("succeeded", "failed"):
            raise Conflict(f"job {job_id!r} has already {job.status}", param="job_id", code="job_finished")
        return job.to_dict()

    return r
