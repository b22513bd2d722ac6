"""chat/presets.py on the page: the presets page, and a new chat started with one's settings;
another person's own preset is a 404; CSRF on every change; bad input refused with a reason."""

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import Preset
from tests.chat.page_html import elements

pytestmark = pytest.mark.django_db

TERSE = {"name": "Terse", "system_prompt": "Answer in one line.", "model": "", "temperature": "0.2", "top_p": "0.5"}


@pytest.fixture
def signed_in(client, alice):
    client.force_login(alice)
    return client


def test_a_preset_made_on_the_page_fills_a_new_chats_settings(signed_in, alice, fake_vllm):
    response = signed_in.post(reverse("chat:presets"), {**TERSE, "max_tokens": "64"})
    assert response.status_code == 302
    preset = Preset.objects.get()
    assert (preset.owner, preset.name, preset.temperature, preset.max_tokens, preset.shared) == (
        alice,
        "Terse",
        0.2,
        64,
        False,
    )
    listed = signed_in.get(reverse("chat:presets")).text
    assert f'href="/?preset={preset.pk}"' in listed
    page = signed_in.get("/", {"preset": preset.pk}).text
    fields = elements(page)
    assert fields["temperature"]["value"] == "0.2" and fields["top_p"]["value"] == "0.5"
    assert fields["max_tokens"]["value"] == "64"
    assert "Answer in one line.</textarea>" in page
    assert f'<option value="{preset.pk}" selected>Terse</option>' in page


def test_a_setting_left_empty_is_the_sites_default(signed_in, settings):
    signed_in.post(reverse("chat:presets"), {"name": "Plain", "temperature": "", "top_p": "", "max_tokens": ""})
    preset = Preset.objects.get()
    assert (preset.temperature, preset.top_p, preset.max_tokens) == (
        settings.CHAT_DEFAULT_TEMPERATURE,
        settings.CHAT_DEFAULT_TOP_P,
        settings.CHAT_DEFAULT_MAX_TOKENS,
    )


def test_a_preset_is_changed_and_deleted_on_the_page(signed_in, alice):
    preset = Preset.objects.create(owner=alice, name="Old")
    assert signed_in.get(reverse("chat:preset", args=[preset.pk])).status_code == 200
    response = signed_in.post(reverse("chat:preset", args=[preset.pk]), {**TERSE, "max_tokens": "10"})
    assert response.status_code == 302
    assert Preset.objects.get().name == "Terse"
    assert signed_in.post(reverse("chat:delete-preset", args=[preset.pk])).status_code == 302
    assert not Preset.objects.exists()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"name": ""}, "This field is required."),
        ({"name": "   "}, "This field is required."),
        ({"name": "x" * 101}, "Ensure this value has at most 100 characters (it has 101)."),
        ({"temperature": "9"}, "Temperature must be between 0 and 2."),
        ({"temperature": "warm"}, "Temperature must be a number."),
        ({"top_p": "-1"}, "Top p must be between 0.01 and 1."),
        ({"max_tokens": "0"}, "Max tokens must be between 1 and"),
        ({"system_prompt": "a\x00b"}, "Null characters are not allowed."),
    ],
)
def test_a_bad_preset_is_refused_with_a_reason(signed_in, change, error):
    response = signed_in.post(reverse("chat:presets"), {**TERSE, "max_tokens": "64", **change})
    assert response.status_code == 400
    assert error in response.text
    assert not Preset.objects.exists()


def test_only_staff_share_presets_and_everyone_picks_them(client, alice, bob):
    client.force_login(alice)
    client.post(reverse("chat:presets"), {**TERSE, "max_tokens": "64", "shared": "on"})
    assert Preset.objects.get().shared is False  # no such field for her
    assert 'name="shared"' not in client.get(reverse("chat:presets")).text
    bob.is_staff = True
    bob.save()
    client.force_login(bob)
    assert 'name="shared"' in client.get(reverse("chat:presets")).text
    client.post(reverse("chat:presets"), {**TERSE, "name": "Team", "max_tokens": "64", "shared": "on"})
    team = Preset.objects.get(name="Team")
    assert team.shared
    client.force_login(alice)
    page = client.get("/").text
    assert f'<option value="{team.pk}">Team</option>' in page
    # Hers to use, not to change.
    assert client.get(reverse("chat:preset", args=[team.pk])).status_code == 404
    assert client.post(reverse("chat:delete-preset", args=[team.pk])).status_code == 404
    assert Preset.objects.filter(pk=team.pk).exists()


def test_another_persons_own_preset_is_404_and_never_shown(client, alice, bob):
    bobs = Preset.objects.create(owner=bob, name="Bob's", system_prompt="Bob's secret")
    client.force_login(alice)
    assert client.get(reverse("chat:preset", args=[bobs.pk])).status_code == 404
    assert client.post(reverse("chat:preset", args=[bobs.pk]), {**TERSE, "max_tokens": "1"}).status_code == 404
    assert client.post(reverse("chat:delete-preset", args=[bobs.pk])).status_code == 404
    page = client.get("/", {"preset": bobs.pk}).text
    assert "Bob" not in page
    assert "Bob" not in client.get(reverse("chat:presets")).text
    assert Preset.objects.get().name == "Bob's"


@pytest.mark.parametrize("preset", ["x", "0", "-1", "99999999999999999999", "٣"])
def test_a_new_chat_with_a_preset_that_is_no_number_is_the_usual_new_chat(signed_in, preset):
    assert signed_in.get("/", {"preset": preset}).status_code == 200


def test_every_change_needs_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    preset = Preset.objects.create(owner=alice, name="Mine")
    for url in [reverse("chat:presets"), reverse("chat:preset", args=[preset.pk])]:
        assert client.post(url, {**TERSE, "max_tokens": "1"}).status_code == 403
    assert client.post(reverse("chat:delete-preset", args=[preset.pk])).status_code == 403
    assert list(Preset.objects.values_list("name", flat=True)) == ["Mine"]
