from django.apps import AppConfig
from django.core import checks as django_checks


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks, receivers

        receivers.connect()
        for check in (checks.llm_api, checks.llm_base_url, checks.llm_providers, checks.static_manifest):
            django_checks.register(check)
