from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User


class FirstAccountForm(UserCreationForm[User]):
    """A username and a password twice, checked by the site's password validators
    (AUTH_PASSWORD_VALIDATORS), for the account that administers the site."""

    def save(self, commit: bool = True) -> User:
        user = super().save(commit=False)
        user.is_staff = user.is_superuser = True
        if commit:
            user.save()
        return user
