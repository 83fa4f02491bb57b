"""Vector + lexical index behind one interface."""

from ragline.index.base import IndexHit, IndexPoint, VectorIndex
from ragline.index.filters import Condition, Filter, parse_filters

__all__ = ["Condition", "Filter", "IndexHit", "IndexPoint", "VectorIndex", "parse_filters"]
