"""chat.signals: `health_checked`, sent (and awaited) by /healthz with the `Health` it found.

The operator's view (ops/) keeps a history of vLLM's health; chat/ must not import it, so /healthz
says what it found and ops listens (ops/apps.py). Sent with `asend`: the note is written before
/healthz answers, as when the view called it directly.
"""

from django.dispatch import Signal

health_checked = Signal()  # keyword: health (engine.vllm_client.Health)
