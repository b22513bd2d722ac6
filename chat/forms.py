from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings

from chat.models import TEMPERATURE_RANGE, TOP_P_RANGE, Conversation, max_tokens_range, out_of_range


def _bounded(field: Callable[..., forms.Field], label: str, low: float, high: float) -> forms.Field:
    message = out_of_range(label, low, high)
    return field(
        required=False,
        min_value=low,
        max_value=high,
        error_messages={"min_value": message, "max_value": message, "invalid": f"{label} must be a number."},
    )


class SendForm(forms.Form):
    """A prompt and the generation settings it is sent with, within the bounds vLLM accepts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built here, not at import, so that the limits follow the settings (and tests' overrides).
        limit = settings.CHAT_MAX_PROMPT_CHARS
        self.fields["prompt"] = forms.CharField(
            max_length=limit,
            error_messages={
                "required": "Type a message first.",
                "max_length": f"This message is too long: at most {limit} characters (it has %(show_value)d).",
            },
        )
        self.fields["temperature"] = _bounded(forms.FloatField, "Temperature", *TEMPERATURE_RANGE)
        self.fields["top_p"] = _bounded(forms.FloatField, "Top p", *TOP_P_RANGE)
        self.fields["max_tokens"] = _bounded(forms.IntegerField, "Max tokens", *max_tokens_range())

    def apply_to(self, conversation: Conversation) -> None:
        for name in ("temperature", "max_tokens", "top_p"):
            if (value := self.cleaned_data.get(name)) is not None:
                setattr(conversation, name, value)

    def first_error(self) -> str:
        return str(next(iter(self.errors.values()))[0])  # an ErrorList item reads as its message


class RenameForm(forms.ModelForm[Conversation]):
    class Meta:
        model = Conversation
        fields = ["title"]

    def clean_title(self) -> str:
        title = " ".join(self.cleaned_data["title"].split())
        if not title:
            raise forms.ValidationError("A title cannot be empty.")
        return title
