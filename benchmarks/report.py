"""The JSON report every benchmark writes: what ran, on which machine, and the rows."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def write_report(out: str | Path, benchmark: str, threads: int, rows: list[dict], **extra: Any) -> Path:
    """Write ``{"benchmark", "machine", **extra, "results"}`` to ``out`` (folders created)."""
    import torch

    report = {
        "benchmark": benchmark,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__},
        **extra,
        "results": rows,
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
