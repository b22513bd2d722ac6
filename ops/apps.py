from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operator's view"

    def ready(self) -> None:
        from chat.signals import health_checked
        from ops import readings

        # /healthz says what it found; the health history is noted here (chat/ does not import ops/).
        health_checked.connect(readings.note_health_checked, dispatch_uid="ops.note_health")
