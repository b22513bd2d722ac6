from typing import Any, TypedDict

from django.contrib import admin, messages
from django.contrib.admin.options import InlineModelAdmin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.db.models import Count, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils.translation import gettext, gettext_lazy
from django_stubs_ext import WithAnnotations

from accounts.admin import OrganisationAccountInline
from chat.models import ApiToken, Conversation, Message, Preset

# What vLLM measured and the turn timed: a record, not something to edit.
MEASURED = ("prompt_tokens", "completion_tokens", "time_to_first_token", "duration", "created_at", "updated_at")


class MessageInline(admin.StackedInline[Message, Conversation]):
    model = Message
    extra = 0
    fields = ("role", "parent", "status", "content", "finish_reason", "error", "model_name", *MEASURED)
    readonly_fields = MEASURED
    # An id box, not a list of every message: a conversation may have thousands.
    raw_id_fields = ("parent",)


class MessageTotal(TypedDict):
    message_total: int


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin[Conversation]):
    list_display = ("title", "owner", "message_count", "updated_at")
    list_filter = ("owner", "messages__status", "messages__model_name")
    search_fields = ("title", "messages__content")
    readonly_fields = ("created_at", "updated_at")
    raw_id_fields = ("branch_tip", "folder")
    inlines = [MessageInline]
    date_hierarchy = "updated_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).select_related("owner").annotate(message_total=Count("messages"))

    # Quoted: WithAnnotations takes its two arguments only in the type checker, not at run time.
    @admin.display(description=gettext_lazy("Messages"), ordering="message_total")
    def message_count(self, conversation: "WithAnnotations[Conversation, MessageTotal]") -> int:
        return conversation.message_total


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin[Preset]):
    """Staff make presets everyone sees here too (tick Shared), as on the presets page."""

    list_display = ("name", "owner", "shared", "model", "updated_at")
    list_filter = ("shared",)
    search_fields = ("name", "system_prompt")
    raw_id_fields = ("owner",)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin[Message]):
    list_display = ("__str__", "conversation", "role", "status", "model_name", "completion_tokens", "created_at")
    list_filter = ("status", "role", "model_name", "conversation__owner")
    search_fields = ("content", "conversation__title")
    readonly_fields = MEASURED
    list_select_related = ("conversation",)
    raw_id_fields = ("conversation", "parent")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = ("__str__", "user", "created_at", "last_used_at")
    list_filter = ("user",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    list_select_related = ("user",)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        # Adding asks only whose token it is and what for; the secret is made on save.
        return ("user", "name") if obj is None else ("user", "name", *self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: ModelForm[ApiToken], change: bool) -> None:
        if not change:
            secret = obj.set_new_secret()
            # The only time the secret is shown: only its hash is stored.
            self.message_user(
                request,
                gettext("The new token's secret is %(secret)s — copy it now, it will not be shown again.")
                % {"secret": secret},
                messages.WARNING,
            )
        super().save_model(request, obj, form, change)


class ApiTokenInline(admin.TabularInline[ApiToken, User]):
    """A person's tokens on their page in the admin: which exist and when each was last used, never a
    secret (only its hash is stored, and not shown). Deleting one here revokes it."""

    model = ApiToken
    extra = 0
    fields = ("name", "prefix", "created_at", "last_used_at")
    readonly_fields = fields
    can_delete = True
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        return False  # a new token's secret is shown once, by the token admin's own add page


# Django's user admin already creates people and deactivates them ("Active"); it gains their tokens.
admin.site.unregister(User)


@admin.register(User)
class PersonAdmin(UserAdmin[User]):
    inlines = [*UserAdmin.inlines, ApiTokenInline, OrganisationAccountInline]

    def get_inlines(self, request: HttpRequest, obj: User | None) -> list[type[InlineModelAdmin[Any, Any]]]:
        # Someone being added has no tokens yet: the add page stays Django's own two-step form.
        return list(super().get_inlines(request, obj)) if obj is not None else []
