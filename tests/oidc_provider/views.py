"""The tests' levers on the provider, as its administrator's console would be: people, their groups
and whether they are active; the site's client registration; faults in the ID tokens it issues."""

import json

from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from oauth2_provider.models import Application
from oauth2_provider.views import TokenView

from tests.oidc_provider.claims import FAULTS


@csrf_exempt
@require_POST
def person(request: HttpRequest) -> HttpResponse:
    wanted = json.loads(request.body)
    user, _ = User.objects.get_or_create(username=wanted["username"])
    user.email = wanted.get("email", "")
    user.is_active = wanted.get("active", True)
    user.set_password(wanted["password"])
    user.save()
    user.groups.set([Group.objects.get_or_create(name=name)[0] for name in wanted.get("groups", [])])
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def client(request: HttpRequest) -> HttpResponse:
    wanted = json.loads(request.body)
    application = Application.objects.filter(client_id=wanted["client_id"]).first()
    redirect_uris = {wanted["redirect_uri"], *(application.redirect_uris.split() if application else [])}
    if application is None:
        application = Application(
            client_id=wanted["client_id"],
            client_secret=wanted["client_secret"],
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            algorithm=Application.RS256_ALGORITHM,
            skip_authorization=True,
            name="Local chat",
        )
    application.redirect_uris = " ".join(sorted(redirect_uris))
    application.save()
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def faults(request: HttpRequest) -> HttpResponse:
    FAULTS.clear()
    FAULTS.update(json.loads(request.body))
    return HttpResponse(status=204)


# Requests to the token endpoint since the provider started: what a test reads to know whether the
# site asked the provider at all.
TOKEN_REQUESTS: list[str] = []


class CountedTokenView(TokenView):  # type: ignore[misc]
    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        TOKEN_REQUESTS.append(request.POST.get("grant_type", ""))
        response: HttpResponse = super().post(request, *args, **kwargs)
        return response


def token_requests(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"count": len(TOKEN_REQUESTS)})
