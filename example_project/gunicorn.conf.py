"""gunicorn settings for the example project (``gunicorn -c gunicorn.conf.py``).

Environment: PORT (8000), WEB_CONCURRENCY (2 workers), WEB_THREADS (4 threads each),
WEB_BIND_HOST (127.0.0.1; use 0.0.0.0 in a container).
"""

import os


def env(name: str, default: str) -> str:
    """The variable, or ``default`` when it is unset or empty."""
    return os.environ.get(name, "").strip() or default


bind = f"{env('WEB_BIND_HOST', '127.0.0.1')}:{env('PORT', '8000')}"
workers = int(env("WEB_CONCURRENCY", "2"))
threads = int(env("WEB_THREADS", "4"))
worker_class = "gthread"
wsgi_app = "example_project.wsgi:application"
accesslog = "-"
graceful_timeout = 5
timeout = 60
# Several servers may run on one machine (tests, benchmarks): no shared control socket.
control_socket_disable = True
