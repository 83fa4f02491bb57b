"""Retrieval: dense, BM25 and their fusion."""
