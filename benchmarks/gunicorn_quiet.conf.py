"""gunicorn settings for the benchmarks: named with ``--config``, so that gunicorn does not
also read ``example_project/gunicorn.conf.py`` from the working directory, whose access log
(a line formatted and written per request) would be measured as if it were the controller.
Otherwise the same as the example project's; the command line sets the rest."""

accesslog = None
control_socket_disable = True
# As the example project serves (a script may still name another worker class).
worker_class = "gthread"
timeout = 60
graceful_timeout = 5
