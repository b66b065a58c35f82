"""Service settings: environment variables with the ``SANDBOX_`` prefix (or CLI options).

Built once in each entry point and passed down; nothing here is read at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "REPO_ROOT", "TENANT_PATTERN"]

REPO_ROOT = Path(__file__).resolve().parent.parent
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"   # no '_', ':' or glob characters: tenants' key patterns never overlap


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
    tenant: str = Field(default="default", pattern=TENANT_PATTERN,
                        description="clients: whose submissions these are; part of every key the client writes or "
                        "reads, and of its Redis user (`sandbox redis-acl --tenant NAME`)")
    cache_key: SecretStr | None = Field(default=None, description="workers: the secret that signs cached results "
                                        "(at least 32 characters; the same on every worker host); unset: the key in "
                                        "cache_key_file, made on first use")
    cache_key_file: Path = Field(default=Path("/var/lib/sandbox/cache-key"),
                                 description="workers: where the cache-signing key is kept when cache_key is unset "
                                 "(created 0600 in a 0700 directory, owned by the worker's user)")
    result_budget_mib: int = Field(default=64, ge=1, description="workers: result bytes one submission may keep in "
                                   "Redis; beyond it results are stored compact (outputs and messages cut, statuses kept)")

    @field_validator("cache_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("SANDBOX_CACHE_KEY must have at least 32 characters (`sandbox redis-acl` prints one)")
        return value
