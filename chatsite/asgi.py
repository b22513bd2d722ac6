import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set up Django (apps, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from chat.turns import recover_interrupted_turns  # noqa: E402

# A process that died mid-answer left messages in "streaming": this process is the only one
# that runs turns, so at start-up none of them can still be running.
recover_interrupted_turns()

application = ProtocolTypeRouter({"http": django_asgi_app})
