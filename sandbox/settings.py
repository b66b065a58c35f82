"""Service settings: environment variables with the ``SANDBOX_`` prefix (or CLI options).

Built once in each entry point and passed down; nothing here is read at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", frozen=True, extra="forbid")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis holding queues and results")
    policies_dir: Path = Field(default=REPO_ROOT / "policies")
    images_dir: Path = Field(default=REPO_ROOT / "images")
    sandbox_max_runs: int = Field(default=500, ge=1, description="batches one warm sandbox serves before recycling")
    infra_attempts: int = Field(default=3, ge=1, le=10, description="tries before a sample is reported infra_error")
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="how long results stay in Redis")
    queue_max_items: int = Field(default=2000, ge=1, description="queue items before submitters must wait")
    batch_size: int = Field(default=8, ge=1, le=1000, description="samples of one problem per queue item")
    heartbeat_s: float = Field(default=5.0, gt=0, description="how often workers report")
    restart_backoff_s: float = Field(default=1.0, gt=0, description="first delay before a pool restarts a dead worker "
                                     "(doubling, at most 30 times this)")
