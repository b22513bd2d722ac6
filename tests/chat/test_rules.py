"""What the chat accepts: the page's forms and the API's schemas say the same for the same mistake."""

import pytest
from pydantic import ValidationError

from api.schemas import ConversationChange, ConversationIn, MessageIn
from chat import rules
from chat.forms import RenameForm, SendForm
from chat.models import Conversation


def api_error(schema, data: dict) -> str:
    with pytest.raises(ValidationError) as raised:
        schema.model_validate(data)
    return raised.value.errors()[0]["msg"]


def page_error(form) -> str:
    assert not form.is_valid()
    return form.first_error() if isinstance(form, SendForm) else form.errors["title"][0]


SENDS = [
    ("an empty prompt", {"prompt": ""}, {"prompt": ""}, "Type a message first."),
    ("a blank prompt", {"prompt": " \n\t "}, {"prompt": " \n\t "}, "Type a message first."),
    ("a prompt too long", {"prompt": "x" * 101}, {"prompt": "x" * 101},
     "This message is too long: at most 100 characters (it has 101)."),
    ("a prompt too long only with its spaces", {"prompt": "x" * 99 + "  "}, {"prompt": "x" * 99 + "  "},
     "This message is too long: at most 100 characters (it has 101)."),
    ("a NUL", {"prompt": "a\x00b"}, {"prompt": "a\x00b"}, "Null characters are not allowed."),
    ("temperature above 2", {"prompt": "hi", "temperature": "2.5"}, {"prompt": "hi", "temperature": 2.5},
     "Temperature must be between 0 and 2."),
    ("top_p 0", {"prompt": "hi", "top_p": "0"}, {"prompt": "hi", "top_p": 0.0}, "Top p must be between 0.01 and 1."),
    ("max_tokens the context", {"prompt": "hi", "max_tokens": "2048"}, {"prompt": "hi", "max_tokens": 2048},
     "Max tokens must be between 1 and 2047."),
]  # fmt: skip


@pytest.mark.parametrize(("case", "posted", "sent", "says"), SENDS, ids=[c[0] for c in SENDS])
def test_the_page_and_the_api_refuse_a_prompt_or_a_setting_in_the_same_words(settings, case, posted, sent, says):
    settings.CHAT_MAX_PROMPT_CHARS = 100
    assert page_error(SendForm(posted)) == says
    assert api_error(MessageIn, sent) == says


@pytest.mark.parametrize(
    ("title", "says"),
    [("   ", "A title cannot be empty."), ("x" * 201, "This title is too long: at most 200 characters (it has 201).")],
)
def test_the_page_and_the_api_refuse_a_new_title_in_the_same_words(title, says):
    assert page_error(RenameForm({"title": title}, instance=Conversation())) == says
    assert api_error(ConversationChange, {"title": title}) == says


def test_the_page_and_the_api_tidy_a_title_alike():
    form = RenameForm({"title": "  Plans \n for  Monday "}, instance=Conversation())
    assert form.is_valid()
    assert form.cleaned_data["title"] == "Plans for Monday"
    assert ConversationChange.model_validate({"title": "  Plans \n for  Monday "}).title == "Plans for Monday"
    assert ConversationIn.model_validate({"title": " \n "}).title == ""  # a first title may be left for the prompt


def test_a_large_context_bound_is_written_whole(settings):
    settings.VLLM_MAX_MODEL_LEN = 1048576  # the context the site assumes until vLLM says otherwise
    says = "Max tokens must be between 1 and 1048575."  # not "1.04858e+06"
    assert page_error(SendForm({"prompt": "hi", "max_tokens": "0"})) == says
    assert api_error(MessageIn, {"prompt": "hi", "max_tokens": 0}) == says


def test_a_title_made_from_the_prompt_is_shorter_than_one_a_person_may_give():
    prompt = "word " * 100
    assert rules.title_from_prompt(prompt) == ("word " * 12).strip()
    assert len(rules.title_from_prompt(prompt)) <= rules.AUTO_TITLE_LENGTH < rules.TITLE_LENGTH
    assert Conversation._meta.get_field("title").max_length == rules.TITLE_LENGTH
