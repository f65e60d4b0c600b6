"""Settings for the benchmarks: the example project's, plus a trivial endpoint and quiet logs."""

from example_project.settings import *  # noqa: F403
from example_project.settings import KOHAKKU_CONTROLLER

ROOT_URLCONF = "bench_urls"
DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
KOHAKKU_CONTROLLER = {
    **KOHAKKU_CONTROLLER,
    "SCHEDULER_BATCH_SIZE": 500,
    "SCHEDULER_PUSH_CONCURRENCY": 64,
    "RECONCILE_REPORTED_TASKS": False,
}
