"""gunicorn settings for the example project (``gunicorn -c gunicorn.conf.py``).

Environment: PORT (8000), WEB_CONCURRENCY (2 workers), WEB_THREADS (4 threads each),
WEB_BIND_HOST (127.0.0.1; use 0.0.0.0 in a container).
"""

import os

bind = f"{os.environ.get('WEB_BIND_HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
wsgi_app = "example_project.wsgi:application"
accesslog = "-"
graceful_timeout = 5
timeout = 60
# Several servers may run on one machine (tests, benchmarks): no shared control socket.
control_socket_disable = True
