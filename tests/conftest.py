"""Test set-up: offline, CPU, deterministic, isolated caches."""

import os

# Before torch is imported: OpenMP spin-waiting made small convs up to 16x slower on 2 cores
# (../shared/notes/synthetic-world-findings.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"  # no test may touch the network

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LMSEG_CACHE", str(tmp_path_factory.mktemp("lmseg_cache")))
    torch.manual_seed(0)


def pytest_configure(config):
    torch.set_num_threads(min(2, os.cpu_count() or 1))
