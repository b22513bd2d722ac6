"""What the test provider says about a person, and the faults a test can ask it to make."""

from datetime import timedelta
from typing import Any

from django.utils import timezone
from oauth2_provider.oauth2_validators import OAuth2Validator

# Set by POST /test/faults (tests/oidc_provider/views.py), for the next ID tokens: "issuer",
# "audience", "nonce" replace those claims, "expired" makes the token an hour old; "unverified_email"
# leaves out `email_verified`, as Entra ID does: nobody says the address is the person's.
FAULTS: dict[str, Any] = {}


class OrganisationValidator(OAuth2Validator):  # type: ignore[misc]
    # Every claim whatever the scopes asked: the groups claim is in none of them.
    oidc_claim_scope = None

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        person = request.user
        claims = {
            "email": person.email,
            "email_verified": True,
            "preferred_username": person.username,
            "groups": sorted(person.groups.values_list("name", flat=True)),
        }
        if FAULTS.get("unverified_email"):
            del claims["email_verified"]
        return claims

    def get_id_token_dictionary(self, token: Any, token_handler: Any, request: Any) -> Any:
        claims, expiration = super().get_id_token_dictionary(token, token_handler, request)
        for fault in ("issuer", "audience", "nonce"):
            if fault in FAULTS:
                claims[{"issuer": "iss", "audience": "aud", "nonce": "nonce"}[fault]] = FAULTS[fault]
        if FAULTS.get("expired"):
            claims["exp"] = int((timezone.now() - timedelta(hours=1)).timestamp())
        return claims, expiration

    def validate_refresh_token(self, refresh_token: str, client: Any, request: Any, *args: Any, **kwargs: Any) -> bool:
        # As Keycloak, Entra ID and Google do: no new tokens for a person deactivated here.
        return bool(super().validate_refresh_token(refresh_token, client, request, *args, **kwargs)) and bool(
            request.user.is_active
        )
