from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext, gettext_lazy

from engine import catalog, vllm_client
from engine.models import Engine


class EngineForm(forms.ModelForm[Engine]):
    # Write-only: the stored key is never sent back to a browser; left blank, it is kept.
    api_key = forms.CharField(
        label=gettext_lazy("API key"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=gettext_lazy("The engine's bearer key, if it wants one. Leave blank to keep the stored key."),
    )
    remove_api_key = forms.BooleanField(label=gettext_lazy("Remove the stored key"), required=False)

    class Meta:
        model = Engine
        fields = ["name", "base_url", "api_key", "enabled"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("remove_api_key"):
            data["api_key"] = ""
        elif not data.get("api_key"):
            # The stored key goes only to the address it was given for: an engine moved to another
            # URL needs its key typed again, or the key would be sent to whatever host the URL names.
            moved = "base_url" in self.changed_data and self.instance.pk is not None
            data["api_key"] = "" if moved else self.instance.api_key
        return data


@admin.register(Engine)
class EngineAdmin(admin.ModelAdmin[Engine]):
    form = EngineForm
    list_display = ("name", "address", "enabled", "has_key")
    list_filter = ("enabled",)
    actions = ["test"]

    @admin.display(description=gettext_lazy("address"))
    def address(self, engine: Engine) -> str:
        return engine.endpoint.shown_url  # without a password in it

    @admin.display(description=gettext_lazy("key"), boolean=True)
    def has_key(self, engine: Engine) -> bool:
        return bool(engine.api_key)

    def save_model(self, request: HttpRequest, obj: Engine, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        catalog.forget_engines()

    def delete_model(self, request: HttpRequest, obj: Engine) -> None:
        super().delete_model(request, obj)
        catalog.forget_engines()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Engine]) -> None:
        super().delete_queryset(request, queryset)
        catalog.forget_engines()

    @admin.action(description=gettext_lazy("Test: ask the engines which models they serve"))
    def test(self, request: HttpRequest, queryset: QuerySet[Engine]) -> None:
        for engine in queryset:
            listed = async_to_sync(vllm_client.list_models)(engine.endpoint)
            if isinstance(listed, vllm_client.Failed):
                text = gettext("%(engine)s is down: %(why)s") % {"engine": engine.name, "why": listed.message}
                self.message_user(request, text, messages.ERROR)
            else:
                served = ", ".join(model.id for model in listed) or gettext("no model")
                text = gettext("%(engine)s is up and serves %(models)s.") % {"engine": engine.name, "models": served}
                self.message_user(request, text, messages.SUCCESS)
