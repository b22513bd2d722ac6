from django.apps import AppConfig


class EngineConfig(AppConfig):
    """The model server: the client that talks to vLLM, and the code that installs and runs it."""

    name = "engine"
