from django.db import models

from chat.models import Message


class Continuation(models.Model):
    """An answer the OpenAI door gave, by the digest of the request it answered, which that
    client's next request continues (api/openai_compat.py).

    The digest covers who asked, for which model, with which system prompt and messages; a request
    that sends those messages, then this answer, then more, continues its conversation. Claimed
    (deleted) by the request that continues it: a history continues from an answer once.
    """

    answer = models.OneToOneField(Message, on_delete=models.CASCADE, primary_key=True, related_name="+")
    digest = models.CharField(max_length=64, db_index=True, help_text="SHA-256 of the request, in hex.")

    def __str__(self) -> str:
        return f"continuation of answer {self.answer_id}"
