"""Knowledge endpoints: collections, documents, search (uploads and jobs: server/uploads.py)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from ragline.engine import Engine
from ragline.gateway import codec
from ragline.ingest.ids import LookalikeId, normalize_id
from ragline.server.caller import CallerDep
from ragline.server.errors import BadRequest
from ragline.server.jobs import JobStore
from ragline.server.protocol import Text
from ragline.server.serving import check_filters, check_query
from ragline.server.uploads import build_upload_router


class CreateCollection(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class SearchRequest(BaseModel):
    query: Text = Field(min_length=1)
    top_k: int = Field(5, ge=1, le=1000)
    mode: Literal["hybrid", "dense", "bm25"] | None = None
    filters: list[Text] | None = None


def build_router(engine: Engine, jobs: JobStore, max_upload_bytes: int) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/collections")
    async def list_collections(caller: CallerDep) -> dict[str, Any]:
        names = await asyncio.to_thread(caller.tenancy.collections)
        return {"object": "list", "data": [{"id": n, "object": "collection"} for n in names]}

    @r.post("/collections", status_code=201)
    async def create_collection(body: CreateCollection, caller: CallerDep) -> dict[str, Any]:
        stored = caller.tenancy.stored(body.name, "name")
        await asyncio.to_thread(engine.collection, stored, create=True)
        return {"id": body.name, "object": "collection"}

    @r.delete("/collections/{name}")
    async def delete_collection(name: str, caller: CallerDep) -> dict[str, Any]:
        stored = caller.tenancy.existing(name)
        await asyncio.to_thread(engine.drop_collection, stored)
        return {"id": name, "object": "collection", "deleted": True}

    @r.get("/collections/{name}/documents")
    async def list_documents(name: str, caller: CallerDep, limit: int = 100, offset: int = 0) -> Response:
        stored = caller.tenancy.existing(name)
        if not 1 <= limit <= 10000 or offset < 0:
            raise BadRequest("limit must be 1-10000 and offset >= 0", param="limit")

        def page() -> bytes:  # up to 10,000 records: read and encoded off the event loop
            docs = engine.documents(collection=stored, limit=limit, offset=offset)
            return codec.dumps({"object": "list", "data": [d.public() for d in docs]})

        return Response(await asyncio.to_thread(page), media_type="application/json")

    @r.delete("/collections/{name}/documents/{doc_id:path}")
    async def delete_document(name: str, doc_id: str, caller: CallerDep) -> dict[str, Any]:
        name = caller.tenancy.existing(name)
        try:  # at most a path's length: ids of files ingested by the CLI are their paths
            wanted = normalize_id(doc_id, what="doc_id", max_chars=4096)
        except LookalikeId as e:
            # an id the API refuses now, stored earlier (or by the CLI): it can still be deleted
            if await asyncio.to_thread(engine.document, doc_id, collection=name) is None:
                raise BadRequest(str(e), param="doc_id") from None
            wanted = doc_id
        except ValueError as e:
            raise BadRequest(str(e), param="doc_id") from None
        if wanted != doc_id and await asyncio.to_thread(engine.document, wanted, collection=name) is None:
            wanted = doc_id  # stored before ids were normalised
        rec = await asyncio.to_thread(engine.delete, wanted, collection=name)
        return {"id": rec.doc_id, "object": "document", "deleted": True, "chunks": rec.n_chunks}

    @r.post("/collections/{name}/search")
    async def search(name: str, body: SearchRequest, caller: CallerDep) -> dict[str, Any]:
        name = caller.tenancy.existing(name)
        max_top_k = engine.settings.server.max_search_top_k
        if body.top_k > max_top_k:
            raise BadRequest(
                f"top_k {body.top_k} is more than {max_top_k} (server.max_search_top_k)",
                param="top_k",
                code="top_k_too_large",
            )
        check_query(engine, body.query, "query")
        check_filters(engine, body.filters, "filters")
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

    r.include_router(build_upload_router(engine, jobs, max_upload_bytes))
    return r
