"""`manage.py runserver` is daphne's ASGI development server, as daphne's own app makes it.

Daphne's app is not installed: its AppConfig imports Twisted, pyOpenSSL and autobahn (about a
third of a second of CPU) into every `manage.py` command and `run`, which never serve. This app
comes first in INSTALLED_APPS, so this command wins over staticfiles' runserver, and Twisted is
imported only when the development server starts.
"""

from daphne.management.commands.runserver import Command as Command
