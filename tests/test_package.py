"""What importing lmseg does to the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Prints the OpenMP wait policy torch's OpenMP sees (the environment at the time torch loads it).
PROBE = "import os, sys; {imports}; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"


def _policy(imports: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports)],
        env={**base, **env}, capture_output=True, text=True, check=True, timeout=120,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("imports", "env", "policy"),
    [
        ("import lmseg", {}, "PASSIVE"),  # idle OpenMP threads sleep: set before torch loads
        ("import lmseg.cli", {}, "PASSIVE"),  # the command line's entry point
        ("import lmseg", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the caller's choice stands
        ("import torch; import lmseg", {}, "unset"),  # too late to matter: left alone
    ],
)
def test_import_sets_a_passive_openmp_wait_policy_only_before_torch(imports, env, policy):
    assert _policy(imports, **env) == policy
