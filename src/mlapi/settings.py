"""One Settings class, built at the entry point from ``MLAPI_*`` variables and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    """Interface the API binds to."""
    port: int = 8000
    """Port of the API."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """Port of the Open Inference Protocol's gRPC service, served by the API process; 0 turns it off."""
    request_timeout_s: float = Field(10.0, gt=0)
    """How long a waiting request waits for its answer before it gets a 504 carrying its id."""
    max_instances: int = Field(256, ge=1)
    """Most samples one `{"instances": [...]}` request may carry."""
    max_body_bytes: int = Field(1 << 20, ge=1024)
    """Largest request body accepted; larger ones get a 413 (artifact uploads have their own limit)."""
    max_artifact_bytes: int = Field(200_000_000, ge=1024)
    """Largest artifact `POST /models/{name}/versions` accepts; larger ones get a 413."""
    validation_timeout_s: float = Field(30.0, gt=0)
    """How long an upload waits for a worker to load-check its artifact before a 503."""
    default_model: str = "diabetes-risk"
    """Model whose default version `POST /predict` serves."""
    cors_origins: list[str] = []
    """Origins allowed to call the API from a browser (the web UI's own origin)."""
    reply_block_ms: int = Field(1000, ge=100)
    """How long one read of the reply stream blocks before it is issued again; bounds shutdown time."""
    max_backlog: int = Field(10_000, ge=0)
    """Admission control: while a model version has more requests waiting (not yet delivered to a worker, or
    delivered and not acknowledged), new ones for it get a 503 with Retry-After at once; 0 turns it off."""
    durable_accept: Literal["off", "async", "all"] = "async"
    """Answer a request only once the broker has its entry on disk (WAITAOF): `async` for `wait=false`
    requests (a 202 then survives a broker crash), `all` for every request, `off` never. Needs Redis >= 7.2 or
    Valkey with `appendonly yes`; the API refuses to start on a broker that cannot, unless `off`."""
    durable_timeout_ms: int = Field(2000, ge=1, le=4000)
    """How long an enqueue waits for the broker's fsync (durable_accept) before the request gets a 503."""
    auth: Literal["off", "required"] = "required"
    """`required`: every request but the health checks carries an API key (`mlapi keys create`), sees only its
    own history and is held to its rate limit; `off`: anyone who reaches the port may do anything (`mlapi up`
    on a loopback address defaults to it)."""
    metrics_access: Literal["open", "admin"] = "open"
    """Who may read `/metrics` and `/backlog` when auth is required: anyone (a Prometheus scraper or the
    workers' autoscaler without a key), or admin keys only."""
    key_cache_s: float = Field(5.0, gt=0, le=60)
    """How long an API process trusts what it looked up about a key; a revocation or a new key is announced
    on a Redis stream and seen at once, so this only bounds how late an announcement missed during a broker
    outage is."""
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    """How long an `Idempotency-Key` is remembered: a retry within it gets the first request's ids and answer."""


class WorkerSettings(BaseModel):
    models: list[str] = []
    """Models this worker serves (every version of each); empty means every model in the registry."""
    batch_size: int = Field(64, ge=1)
    """Most queued messages taken, predicted and stored together."""
    block_ms: int = Field(1000, ge=10)
    """How long a read of the queue blocks when it is empty; bounds how late a shutdown or reclaim is."""
    visibility_timeout_ms: int = Field(30_000, ge=100)
    """A message held this long by a consumer without acknowledgement is reclaimed by another."""
    max_deliveries: int = Field(3, ge=1)
    """Deliveries after which a message whose worker died or hung holding it is dead-lettered (broker and
    database outages do not count)."""
    predict_timeout_s: float = Field(30.0, gt=0)
    """A predict that has not returned after this long ends the worker process (with a traceback of where it
    hung), so that its supervisor replaces it; its batch is reclaimed by the other workers, one entry at a time."""
    trim_interval_s: float = Field(5.0, gt=0)
    """How often acknowledged entries are trimmed from the request stream."""
    liveness_ms: int = Field(5000, ge=100)
    """A worker without a heartbeat for this long is not counted live (by `/readyz` and the API's routing)."""
    consumer: str | None = None
    """Consumer name in the group; defaults to host name and pid."""
    runtime_plugins: dict[str, str] = {}
    """Extra runtimes, by name: an importable module with `load(artifact, spec) -> Runtime` (JSON, e.g.
    `{"mine": "my_package.runtime"}`). Operator-installed code; the API takes uploads only for built-in runtimes."""


class WebSettings(BaseModel):
    host: str = "127.0.0.1"
    """Interface the web UI binds to."""
    port: int = 9090
    """Port of the web UI."""
    api_url: str = "http://127.0.0.1:8000"
    """Where the web UI finds the API."""
    api_timeout_s: float = Field(15.0, gt=0)
    """How long the web UI waits for the API before it tells the user the API is too slow."""
    page_size: int = Field(25, ge=1, le=500)
    """Predictions per page of the history table."""
    refresh_s: float = Field(5.0, ge=0)
    """How often an open history page refreshes itself; 0 turns live updates off."""


class QualitySettings(BaseModel):
    psi_watch: float = Field(0.1, gt=0)
    """A feature whose population stability index reaches this is `watch` (below it, `stable`)."""
    psi_drifted: float = Field(0.25, gt=0)
    """A feature whose population stability index reaches this is `drifted`."""
    window_days: float = Field(7.0, gt=0)
    """Default window of `GET /models/{name}/quality` and of the quality gauges in /metrics."""
    drift_window_h: float = Field(24.0, gt=0)
    """Default window of `GET /models/{name}/drift` and of the drift gauges in /metrics."""
    metrics_interval_s: float = Field(60.0, ge=0)
    """The quality and drift gauges in /metrics are recomputed at a scrape at most this often."""


class UpSettings(BaseModel):
    data_dir: Path = Path(".mlapi")
    """Where `mlapi up` keeps the embedded servers' data, so history survives a restart."""
    redis_port: int = 16379
    """Port of the Redis-compatible server `mlapi up` starts."""
    postgres_port: int = 15432
    """Port of the PostgreSQL server `mlapi up` starts."""
    workers: int = Field(2, ge=0)
    """Model worker processes `mlapi up` starts."""
    web: bool = True
    """Whether `mlapi up` starts the web UI."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLAPI_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    redis_url: str | None = None
    """Redis-compatible broker, e.g. `redis://127.0.0.1:6379/0`; `mlapi up` starts one when unset."""
    database_url: str | None = None
    """PostgreSQL, e.g. `postgresql://user:pw@host/db`; `mlapi up` starts one when unset."""
    bundled_models_dir: Path = PACKAGE_DIR / "models" / "registry"
    """Models shipped with the package (a directory each: `spec.json` and `model.skops`); `mlapi migrate`
    seeds them into the registry, which lives in PostgreSQL."""
    registry_refresh_s: float = Field(5.0, gt=0)
    """Every process re-reads the registry at least this often, as the backstop to its change events."""
    admin_key: SecretStr | None = None
    """An admin API key named `admin` that `mlapi migrate` creates (or gives this secret, when it changed):
    how compose and Kubernetes provision the first key from a secret. At least 32 characters."""
    log_level: str = "INFO"
    """Log level of every service."""
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()
    web: WebSettings = WebSettings()
    quality: QualitySettings = QualitySettings()
    up: UpSettings = UpSettings()

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SystemExit("MLAPI_REDIS_URL is not set (mlapi up sets it for the services it starts)")
        return self.redis_url

    def require_database_url(self) -> str:
        """The database URL with the asyncpg driver SQLAlchemy needs."""
        if not self.database_url:
            raise SystemExit("MLAPI_DATABASE_URL is not set (mlapi up sets it for the services it starts)")
        url = self.database_url
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url.removeprefix(prefix)
        raise SystemExit(f"MLAPI_DATABASE_URL must be a postgresql:// URL, got {url!r}")
