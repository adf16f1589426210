"""The old import path of `harness.support`, for tests not moved to it yet."""

from harness.support import (
    REPO,
    ServiceProcess,
    free_port,
    health_status,
    scrape,
    wait_for_samples,
)

__all__ = ["REPO", "ServiceProcess", "free_port", "health_status", "scrape", "wait_for_samples"]
