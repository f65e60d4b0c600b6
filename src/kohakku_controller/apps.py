from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class KohakkuControllerConfig(AppConfig):
    name = "kohakku_controller"
    label = "kohakku_controller"
    verbose_name = _("Kohakku controller")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (register checks and receivers)
        from .tasks import receivers  # noqa: F401
