"""A host whose global DRF settings throttle, version, filter and describe every view, and
name non-field errors its own way (see test_auth)."""

from tests.settings import *  # noqa: F403

REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"anon": "1/day"},
    "DEFAULT_VERSIONING_CLASS": "rest_framework.versioning.AcceptHeaderVersioning",
    "ALLOWED_VERSIONS": ["2"],
    "DEFAULT_FILTER_BACKENDS": ["tests.host_filters.HideEverything"],
    "DEFAULT_METADATA_CLASS": None,
    "NON_FIELD_ERRORS_KEY": "errors",
}
ALLOWED_HOSTS = ["testserver"]
# Its own database, whatever DATABASE_URL names: the liveness probe only asks it "SELECT 1".
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
