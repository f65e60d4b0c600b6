from django.apps import AppConfig, apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

#: Apps whose models the controller's models refer to: without them the models cannot even
#: be imported, so they are checked before (the other required apps: check E005).
MODEL_DEPENDENCIES = ("oauth2_provider",)


class KohakkuControllerConfig(AppConfig):
    name = "kohakku_controller"
    label = "kohakku_controller"
    verbose_name = _("Kohakku controller")
    default_auto_field = "django.db.models.BigAutoField"

    def import_models(self) -> None:
        missing = [app for app in MODEL_DEPENDENCIES if not apps.is_installed(app)]
        if missing:
            raise ImproperlyConfigured(
                f"kohakku_controller needs {', '.join(repr(a) for a in missing)} in "
                "INSTALLED_APPS (see 'Install into a host project')."
            )
        super().import_models()

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (register checks and receivers)
        from .oauth import revoke_tokens_on_secret_changes
        from .tasks import receivers  # noqa: F401

        revoke_tokens_on_secret_changes()
