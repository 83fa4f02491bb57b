"""Ingestion: parse -> clean -> dedup -> chunk -> embed -> index, with a registry of documents."""
