from django.apps import AppConfig


class EngineConfig(AppConfig):
    """The model server: the client that talks to vLLM, and the code that installs and runs it."""

    name = "engine"

    def ready(self) -> None:
        from django.core import checks

        from engine.catalog import check_configured_engines

        checks.register(check_configured_engines)
