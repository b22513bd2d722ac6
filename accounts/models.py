from django.conf import settings
from django.db import models


class FirstAccount(models.Model):
    """The account made from the sign-in page of a site that had none.

    There can be only one row (`only` is unique), and it is written in the same transaction as
    the account: when two browsers create the first account at once, the database refuses the
    second, whatever its isolation level, and that transaction, account and all, is undone.
    """

    only = models.BooleanField(default=True, unique=True, editable=False)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"first account: {self.user}"
