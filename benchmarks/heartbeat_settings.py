"""Settings of the heartbeat benchmark: the example project plus one trivial endpoint."""

from example_project.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks.heartbeat_urls"
# Request logs would measure the console, not the controller.
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
