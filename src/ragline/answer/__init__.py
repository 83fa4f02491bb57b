"""Answers: prompt building, the LLM seam, generated and extractive answers with citations."""
