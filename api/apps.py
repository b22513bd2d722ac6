from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The doors for programs: the REST API, model-compose's workflow routes, the OpenAI-compatible /v1."""

    name = "api"
