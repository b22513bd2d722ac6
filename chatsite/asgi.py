import os

from django.core.asgi import get_asgi_application
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set up Django (apps, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from chat.turns import recover_interrupted_turns, worker_started  # noqa: E402
from chatsite.request_threads import RequestThreads  # noqa: E402

# A worker that died mid-answer left it "streaming": once its lease has expired, it is marked
# interrupted. Another worker's live answers are left alone.
recover_interrupted_turns()
# On this, the main thread, which then runs the event loop and never queries again: its connection
# would be one of PostgreSQL's pooled ones, lent for the life of the process.
connections.close_all()

# The worker's own jobs (renewing its leases, sweeping dead workers' answers, answering other
# workers) start with the first request: daphne has no start-up hook on its event loop.
application = worker_started(ProtocolTypeRouter({"http": RequestThreads(django_asgi_app)}))
