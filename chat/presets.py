"""Presets: saved settings (system prompt, model, temperature, top p, max tokens) that a new chat
starts with. A person's own are theirs alone; staff may share one with everyone.

Another person's own preset is "not found" on every door, as a conversation is; a shared one is
seen by all but changed by staff only.
"""

from typing import Any

from django import forms
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext, gettext_lazy

from chat import rules
from chat.forms import _setting, row_id
from chat.models import (
    Conversation,
    Preset,
    PresetQuerySet,
    Someone,
    default_max_tokens,
    default_temperature,
    default_top_p,
)

PRESET_NAME_LENGTH = 100
# A limit on what one person can keep: every new chat page lists them.
MAX_PRESETS = 100


def seen_by(user: Someone) -> PresetQuerySet:
    return Preset.objects.seen_by(user)


def preset_or_404(user: Someone, pk: int) -> Preset:
    return get_object_or_404(seen_by(user), pk=pk)


def changeable_or_404(user: Someone, pk: int) -> Preset:
    return get_object_or_404(Preset.objects.changeable_by(user), pk=pk)


def too_many(user: Someone) -> bool:
    return Preset.objects.filter(owner=user.pk).count() >= MAX_PRESETS


def too_many_message() -> str:
    return gettext("You have %(limit)s presets, the most there can be.") % {"limit": MAX_PRESETS}


def apply_to(preset: Preset, conversation: Conversation) -> None:
    """A new conversation's settings from the preset (the request's own may then change some)."""
    conversation.change_settings(
        system_prompt=preset.system_prompt,
        temperature=preset.temperature,
        max_tokens=preset.max_tokens,
        top_p=preset.top_p,
        model=preset.model,
    )


def chosen_for_new_chat(user: Someone, text: str) -> Preset | None:
    """The preset a new chat page was asked to start with (`?preset=`), if the person may use it."""
    if (pk := row_id(text)) is None:
        return None
    return seen_by(user).filter(pk=pk).first()


def new_chat_panel(user: Someone, text: str) -> dict[str, Any]:
    """What a new chat page shows of presets: the list to pick from, and the chosen one's settings
    in the settings panel (they go with the first prompt, as the panel's always do)."""
    chosen = chosen_for_new_chat(user, text)
    panel: dict[str, Any] = {"presets": list(seen_by(user)[: MAX_PRESETS * 2]), "preset": chosen}
    if chosen is not None:
        panel["preset_model"] = chosen.model
        panel["defaults"] = {
            "system_prompt": chosen.system_prompt,
            "temperature": chosen.temperature,
            "top_p": chosen.top_p,
            "max_tokens": chosen.max_tokens,
        }
    return panel


class PresetForm(forms.ModelForm[Preset]):
    """A preset, from the presets page; checked by the same rules as a conversation's settings."""

    name = forms.CharField(max_length=PRESET_NAME_LENGTH, label=gettext_lazy("Name"))
    system_prompt = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"rows": 3}))
    model = forms.CharField(required=False, max_length=200)
    temperature = _setting(forms.FloatField, rules.TEMPERATURE)
    top_p = _setting(forms.FloatField, rules.TOP_P)

    class Meta:
        model = Preset
        fields = ["name", "system_prompt", "model", "temperature", "top_p", "max_tokens", "shared"]

    def __init__(self, *args: Any, user: Someone, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        model = str(self.data.get("model", "")) or (self.instance.model if self.instance else "")
        self.fields["max_tokens"] = _setting(forms.IntegerField, rules.max_tokens(model))
        for name, label in [
            ("system_prompt", gettext_lazy("System prompt")),
            ("model", gettext_lazy("Model")),
            ("temperature", gettext_lazy("Temperature")),
            ("top_p", gettext_lazy("Top p")),
            ("max_tokens", gettext_lazy("Max tokens")),
            ("shared", gettext_lazy("Shared with everyone")),
        ]:
            self.fields[name].label = label
        self.fields["model"].help_text = gettext_lazy("Empty: the site's default model.")
        if not user.is_staff:
            del self.fields["shared"]  # only staff share presets

    def clean_name(self) -> str:
        name = rules.tidy_title(rules.storable(self.cleaned_data["name"]))
        if not name:
            raise forms.ValidationError(gettext("A preset needs a name."))
        return name

    def clean_system_prompt(self) -> str:
        return rules.clean_system_prompt(self.cleaned_data["system_prompt"])

    def clean_model(self) -> str:
        return rules.storable(self.cleaned_data["model"].strip())

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # A setting left empty is the site's default, as on a new chat (the model fields' defaults).
        defaults = {"temperature": default_temperature, "top_p": default_top_p, "max_tokens": default_max_tokens}
        for name, default in defaults.items():
            if name in cleaned and cleaned[name] is None:
                cleaned[name] = default()
        if self.instance._state.adding and too_many(self.user):
            raise forms.ValidationError(too_many_message())
        return cleaned
