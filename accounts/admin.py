from django.contrib import admin
from django.contrib.auth.models import User
from django.http import HttpRequest

from accounts.models import OrganisationAccount


class OrganisationAccountInline(admin.StackedInline[OrganisationAccount, User]):
    """A person's link to the organisation's provider on their page in the admin (chat/admin.py):
    whose account there, when last checked, whether refused; never a token. Deleting it unlinks
    them: their next sign-in there is matched again as a first one."""

    model = OrganisationAccount
    extra = 0
    fields = ("subject", "checked_at", "refused")
    readonly_fields = fields
    can_delete = True

    def has_add_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        return False  # made by a sign-in at the provider, never by hand
