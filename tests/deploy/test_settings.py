"""The site's deployment settings (chatsite/settings.py), read by a process of its own from its environment
as an operator sets it: `manage.py check --deploy`, and mail for password resets.
"""

import os
import secrets
import subprocess
import sys

from tests.commands import ROOT


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("DJANGO_", "EMAIL_"))},
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",  # the product's, not the tests'
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_with_https_on_the_deployment_check_is_clean():
    result = manage("check", "--deploy", "--fail-level", "WARNING", DJANGO_HTTPS="true")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_without_it_the_deployment_check_names_what_https_would_turn_on():
    result = manage("check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


def test_each_https_setting_can_still_be_set_on_its_own():
    code = (
        "from django.conf import settings as s; print(s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_PRELOAD, "
        "s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.SECURE_PROXY_SSL_HEADER)"
    )
    result = manage(
        "shell", "--no-imports", "-c", code,
        DJANGO_HTTPS="true", DJANGO_SECURE_HSTS_SECONDS="3600", DJANGO_SECURE_HSTS_PRELOAD="false",
    )  # fmt: skip

    assert result.stdout.strip() == "3600 False True True ('HTTP_X_FORWARDED_PROTO', 'https')", result.stderr


def test_mail_is_configured_only_with_a_mail_host():
    code = "from django.conf import settings as s; print(s.MAILERS)"
    assert manage("shell", "--no-imports", "-c", code).stdout.strip() == "{}"

    configured = manage(
        "shell", "--no-imports", "-c", code,
        EMAIL_HOST="mail.example.org", EMAIL_PORT="465", EMAIL_HOST_USER="chat", EMAIL_HOST_PASSWORD="secret",
        EMAIL_USE_TLS="false", EMAIL_USE_SSL="true",
    )  # fmt: skip
    assert configured.stdout.strip() == str(
        {
            "default": {
                "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "OPTIONS": {
                    "host": "mail.example.org",
                    "port": 465,
                    "username": "chat",
                    "password": "secret",
                    "use_tls": False,
                    "use_ssl": True,
                    "timeout": 10,
                },
            }
        }
    ), configured.stderr


def test_runserver_is_daphnes_yet_other_commands_start_without_twisted():
    # Each `manage.py` command and `run` is a process start; daphne's own app imported Twisted,
    # pyOpenSSL and autobahn into every one (a third of a second of CPU) for the one command that serves.
    code = (
        "import sys; from django.core.management import get_commands, load_command_class; "
        "print(sorted(m for m in ('twisted', 'daphne', 'autobahn', 'OpenSSL') if m in sys.modules)); "
        "print(type(load_command_class(get_commands()['runserver'], 'runserver')).__module__)"
    )
    result = manage("shell", "--no-imports", "-c", code)

    assert result.stdout.splitlines() == ["[]", "daphne.management.commands.runserver"], result.stderr
