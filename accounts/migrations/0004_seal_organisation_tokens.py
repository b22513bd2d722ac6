"""The provider's tokens already stored, sealed (accounts/sealed.py), and unsealed when migrating back.

The tokens are rewritten while their columns are still plain text in the migration's state (sealing
before the fields change, unsealing after they changed back), so that what is read and written here
is the column's text as it is. Unsealing back, a token that no key of the site opens becomes none:
that person signs in at the provider again, as the sealed field would have them do.
"""

from django.db import migrations

import accounts.sealed


def _rewrite(apps, change):
    OrganisationAccount = apps.get_model("accounts", "OrganisationAccount")
    # All read first (one row a person): SQLite does not isolate a query being read from writes to its table.
    rows = list(OrganisationAccount.objects.values_list("pk", "refresh_token", "access_token"))
    for pk, refresh_token, access_token in rows:
        OrganisationAccount.objects.filter(pk=pk).update(
            refresh_token=change(refresh_token) if refresh_token else "",
            access_token=change(access_token) if access_token else "",
        )


def seal_stored_tokens(apps, schema_editor):
    _rewrite(apps, accounts.sealed.seal)


def unseal_stored_tokens(apps, schema_editor):
    _rewrite(apps, accounts.sealed.unseal)


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_organisation_account'),
    ]

    operations = [
        migrations.RunPython(seal_stored_tokens, unseal_stored_tokens),
        migrations.AlterField(
            model_name='organisationaccount',
            name='access_token',
            field=accounts.sealed.SealedTextField(blank=True, editable=False, serialize=False),
        ),
        migrations.AlterField(
            model_name='organisationaccount',
            name='refresh_token',
            field=accounts.sealed.SealedTextField(blank=True, editable=False, serialize=False),
        ),
    ]
