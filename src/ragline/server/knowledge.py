"""Knowledge endpoints: collections, documents (upload as jobs), search."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field

from ragline.collection import validate_name
from ragline.engine import Engine
from ragline.ingest.cleaning import clean_text
from ragline.ingest.parsers import parse_file, supported_suffixes
from ragline.server.errors import BadRequest, NotFound, PayloadTooLarge
from ragline.server.jobs import JobStore
from ragline.server.protocol import Text
from ragline.types import ParsedDocument, Section


class CreateCollection(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class TextDocument(BaseModel):
    id: Text = Field(min_length=1, max_length=512)
    text: Text = Field(min_length=1)
    title: Text = ""
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)


class UploadDocuments(BaseModel):
    documents: list[TextDocument] = Field(min_length=1)


class SearchRequest(BaseModel):
    query: Text = Field(min_length=1)
    top_k: int = Field(5, ge=1, le=1000)
    mode: Literal["hybrid", "dense", "bm25"] | None = None
    filters: list[str] | None = None


def _collection_exists(engine: Engine, name: str) -> str:
    validate_name(name)
    if name not in engine.collections():
        raise NotFound(f"collection {name!r} does not exist", param="collection")
    return name


def build_router(engine: Engine, jobs: JobStore, max_upload_bytes: int) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/collections")
    async def list_collections() -> dict[str, Any]:
        names = await asyncio.to_thread(engine.collections)
        return {"object": "list", "data": [{"id": n, "object": "collection"} for n in names]}

    @r.post("/collections", status_code=201)
    async def create_collection(body: CreateCollection) -> dict[str, Any]:
        try:
            validate_name(body.name)
        except Exception as e:
            raise BadRequest(str(e), param="name") from e
        await asyncio.to_thread(engine.collection, body.name, create=True)
        return {"id": body.name, "object": "collection"}

    @r.delete("/collections/{name}")
    async def delete_collection(name: str) -> dict[str, Any]:
        _collection_exists(engine, name)
        await asyncio.to_thread(engine.drop_collection, name)
        return {"id": name, "object": "collection", "deleted": True}

    @r.get("/collections/{name}/documents")
    async def list_documents(name: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        _collection_exists(engine, name)
        if not 1 <= limit <= 10000 or offset < 0:
            raise BadRequest("limit must be 1-10000 and offset >= 0", param="limit")
        docs = await asyncio.to_thread(engine.documents, collection=name, limit=limit, offset=offset)
        return {"object": "list", "data": [d.public() for d in docs]}

    @r.delete("/collections/{name}/documents/{doc_id:path}")
    async def delete_document(name: str, doc_id: str) -> dict[str, Any]:
        _collection_exists(engine, name)
        rec = await asyncio.to_thread(engine.delete, doc_id, collection=name)
        return {"id": rec.doc_id, "object": "document", "deleted": True, "chunks": rec.n_chunks}

    @r.post("/collections/{name}/documents", status_code=202)
    async def upload_documents(name: str, body: UploadDocuments) -> dict[str, Any]:
        validate_name(name)
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
        job = jobs.submit(
            "ingest",
            lambda progress: engine.ingest_documents(
                docs, collection=name, progress=progress, total=len(docs)
            ).to_dict(),
        )
        return job.to_dict()

    @r.post("/collections/{name}/files", status_code=202)
    async def upload_file(
        name: str, file: Annotated[UploadFile, File()], doc_id: Annotated[str | None, Form()] = None
    ) -> dict[str, Any]:
        """Upload one file (any supported format); its id is ``doc_id`` or the file name."""
        validate_name(name)
        filename = Path(file.filename or "").name  # never a path from the client
        if not filename or filename.startswith("."):
            raise BadRequest("invalid file name", param="file")
        if Path(filename).suffix.lower() not in supported_suffixes():
            raise BadRequest(f"unsupported file type {Path(filename).suffix or '(none)'}", param="file")
        limit = min(max_upload_bytes, engine.settings.ingest.max_file_bytes)
        tmpdir = Path(tempfile.mkdtemp(prefix="ragline-upload-"))
        target = tmpdir / filename
        size = 0
        with target.open("wb") as fh:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    shutil.rmtree(tmpdir, ignore_errors=True)
                    raise PayloadTooLarge(f"file exceeds {limit} bytes", param="file")
                fh.write(chunk)
        ident = doc_id or filename

        def work(progress: Any) -> dict[str, Any]:
            try:
                docs = parse_file(target, ident)
                for d in docs:
                    d.source = filename if d.doc_id == ident else d.source.replace(str(target), filename)
                report = engine.ingest_documents(docs, collection=name, progress=progress, total=len(docs))
                return report.to_dict()
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)

        return jobs.submit("ingest", work).to_dict()

    @r.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", param="job_id")
        return job.to_dict()

    @r.post("/collections/{name}/search")
    async def search(name: str, body: SearchRequest) -> dict[str, Any]:
        _collection_exists(engine, name)
        hits = await asyncio.to_thread(
            engine.search, body.query, collection=name, top_k=body.top_k, mode=body.mode, filters=body.filters
        )
        return {
            "object": "list",
            "data": [
                {
                    "chunk_id": h.chunk_id,
                    "score": h.score,
                    "dense_score": h.dense_score,
                    "bm25_score": h.bm25_score,
                    "text": h.text,
                    "metadata": h.payload,
                }
                for h in hits
            ],
        }

    return r
