"""The people the tests create: one password for all of them, and signing in as a browser does."""

import httpx

PASSWORD = "a-long-test-password"


def login(client: httpx.Client, username: str, password: str = PASSWORD) -> None:
    """Signs in through the login form of the site `client` is pointed at, keeping the session."""
    client.get("/accounts/login/")
    response = client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
    )
    assert response.status_code == 302, response.text
