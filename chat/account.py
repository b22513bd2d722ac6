"""A person's own account, from the page: their API tokens (their password is Django's own views).

A token is reached only through its owner, so another person's token is a 404, as their
conversations are.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from chat import ownership
from chat.forms import TokenForm
from chat.models import ApiToken


def _tokens_page(request: HttpRequest, form: TokenForm, new_secret: str = "", status: int = 200) -> HttpResponse:
    tokens = ApiToken.objects.filter(user=ownership.signed_in(request))
    return render(
        request, "account/tokens.html", {"tokens": tokens, "form": form, "new_secret": new_secret}, status=status
    )


@login_required
@require_GET
def tokens(request: HttpRequest) -> HttpResponse:
    return _tokens_page(request, TokenForm())


# never_cache: the answer to a creation holds the secret, which no cache (or back button) may keep.
@never_cache
@login_required
@require_POST
def create_token(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _tokens_page(request, form, status=400)
    _token, secret = ApiToken.issue(ownership.signed_in(request), form.cleaned_data["name"])
    # Shown in this answer and never again: only the secret's hash is stored. Not through a
    # redirect and Django's messages, which may keep it in a cookie.
    return _tokens_page(request, TokenForm(), new_secret=secret)


@login_required
@require_POST
def revoke_token(request: HttpRequest, pk: int) -> HttpResponse:
    get_object_or_404(ApiToken, pk=pk, user=ownership.signed_in(request)).delete()
    return redirect("chat:tokens")
