"""Two `ragline eval retrieval` result files side by side: nDCG@10 per mode, and per-query differences.

.venv/bin/python -m bench.compare_evals A.json B.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    a, b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in sys.argv[1:3])
    rows: dict[str, dict[str, Any]] = {}
    for ra in a["results"]:
        rb = next((r for r in b["results"] if r["mode"] == ra["mode"]), None)
        if rb is None:
            continue
        pa, pb = ra["per_query"], rb["per_query"]
        differ = sum(1 for q in pa if abs(pa[q]["ndcg@10"] - pb.get(q, {}).get("ndcg@10", -1)) > 1e-9)
        rows[ra["mode"]] = {
            "ndcg@10": [ra["metrics"]["ndcg@10"], rb["metrics"]["ndcg@10"]],
            "diff": round(rb["metrics"]["ndcg@10"] - ra["metrics"]["ndcg@10"], 5),
            "queries_differing": differ,
            "queries": len(pa),
        }
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
