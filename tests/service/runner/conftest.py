"""The worker's tests run on short timings: a lease of 3 s, retries after 50 ms, no warm spare."""

from __future__ import annotations

import pytest

from foundation.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state", max_attempts=3, retry_backoff_s=0.05, lease_s=3.0,
                    shutdown_grace_s=5.0, progress_interval_s=0.0, warm_spare=False)
