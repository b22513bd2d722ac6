"""The page's forms: Django parses what the browser sent; chat/rules.py decides what is accepted."""

from typing import Any

from django import forms
from django.utils.functional import lazy
from django.utils.translation import gettext_lazy

from chat import rules
from chat.models import MAX_ID, ApiToken, Conversation


def row_id(text: str) -> int | None:
    """A stored row's id, from a query parameter or form field sent as text; None if it cannot be one."""
    return int(text) if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ID else None


def _setting(field: type[forms.Field], bounds: rules.Bounds) -> forms.Field:
    # Lazy: the form class is made once, its message is read in each request's language.
    not_a_number = lazy(lambda: bounds.not_a_number, str)()
    return field(required=False, validators=[bounds.check], error_messages={"invalid": not_a_number})


class PageForm(forms.Form):
    """A form of the page's, whose refusal the page shows as one message beside it (chat.js)."""

    def first_error(self) -> str:
        return str(next(iter(self.errors.values()))[0])  # an ErrorList item reads as its message


class PromptForm(PageForm):
    """A prompt, new or edited."""

    # Not required and not stripped here: the prompt's rule measures it as typed, then says
    # "Type a message first." for one that is empty or blank.
    prompt = forms.CharField(required=False, strip=False)

    def clean_prompt(self) -> str:
        return rules.clean_prompt(self.cleaned_data["prompt"])


class SettingsForm(PageForm):
    """A conversation's settings, from its panel on the page. A setting not sent is left as it is."""

    system_prompt = forms.CharField(required=False, strip=False)
    temperature = _setting(forms.FloatField, rules.TEMPERATURE)
    top_p = _setting(forms.FloatField, rules.TOP_P)
    # A model the engines list (engine/catalog.py; the view asks it); empty: the default model.
    model = forms.CharField(required=False, max_length=200)

    def __init__(self, *args: Any, model: str = "", **kwargs: Any) -> None:
        """`model`: the model the settings are for, whose context bounds max_tokens."""
        super().__init__(*args, **kwargs)
        # Built here, not at import, so that the bounds follow the settings (and tests' overrides).
        self.fields["max_tokens"] = _setting(forms.IntegerField, rules.max_tokens(model))

    def clean_model(self) -> str | None:
        return None if "model" not in self.data else self.cleaned_data["model"]

    def clean_system_prompt(self) -> str | None:
        # An empty system prompt is one to clear; one not sent is left as it is.
        if "system_prompt" not in self.data:
            return None
        return rules.clean_system_prompt(self.cleaned_data["system_prompt"])

    def apply_to(self, conversation: Conversation) -> None:
        conversation.change_settings(
            system_prompt=self.cleaned_data.get("system_prompt"),
            temperature=self.cleaned_data.get("temperature"),
            max_tokens=self.cleaned_data.get("max_tokens"),
            top_p=self.cleaned_data.get("top_p"),
            model=self.cleaned_data.get("model"),
        )


class SendForm(PromptForm, SettingsForm):
    """A prompt, the message it follows, and the settings it is sent with (the panel's, which a new
    conversation has nowhere else to keep)."""

    # The last message on the person's screen: the page sends it so that the prompt continues the
    # branch they see, even if another tab has shown another one since.
    parent = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    field_order = ["prompt"]


class RenameForm(forms.ModelForm[Conversation]):
    # The title's rule checks its length and tidies it: the model field's form field would
    # measure it after stripping, with Django's wording.
    title = forms.CharField(required=False, strip=False)

    class Meta:
        model = Conversation
        fields = ["title"]

    def clean_title(self) -> str:
        return rules.clean_new_title(self.cleaned_data["title"])

    def save(self, commit: bool = True) -> Conversation:
        self.instance.title_set_by_person = True  # the model will not name it over the person
        conversation = super().save(commit=False)
        if commit:
            # Only these: a whole save would write back this copy's branch and settings over a
            # turn's or another tab's change made since it was read.
            conversation.save(update_fields=["title", "title_set_by_person", "updated_at"])
        return conversation


class TokenForm(forms.ModelForm[ApiToken]):
    # Named when made from the page, so that a list of several says which is which.
    name = forms.CharField(max_length=100, help_text=gettext_lazy("What it is for, e.g. “laptop CLI”."))

    class Meta:
        model = ApiToken
        fields = ["name"]
