"""Configuration of the reference dispatcher: command-line flags and environment variables.

Every flag ``--some-option`` can also be set with the environment variable
``KOHAKKU_DISPATCHER_SOME_OPTION``; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "KOHAKKU_DISPATCHER_"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class DispatcherConfig:
    """Everything the dispatcher needs to run. Times are seconds, sizes are bytes."""

    controller_url: str
    client_id: str
    client_secret: str
    name: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8081
    # The URL the controller pushes to; derived from the listen address when empty.
    endpoint_url: str = ""
    state_dir: Path = Path("var/dispatcher")
    cloud: str = "local"
    backends: list[str] = field(default_factory=lambda: ["local"])
    labels: dict[str, str] = field(default_factory=dict)
    capacity: int = 4
    heartbeat_interval: int = 60
    # Skills run with this PATH (and nothing else from the dispatcher's environment).
    skill_path: str = field(default_factory=lambda: os.environ.get("PATH") or DEFAULT_PATH)
    max_push_bytes: int = 1024 * 1024
    # Seconds the HTTP server waits on a silent connection (a request line, headers or
    # body that stop arriving, or an idle kept-alive connection) before closing it.
    request_timeout: float = 10.0
    # Seconds a request (request line, headers and body) may take to arrive in all, from
    # its first byte, however slowly it trickles in; then it is answered 408 or dropped.
    request_deadline: float = 30.0
    # Connections served at the same time; more are closed at once.
    max_connections: int = 128
    max_package_bytes: int = 50 * 1024 * 1024
    max_extracted_bytes: int = 200 * 1024 * 1024
    max_package_files: int = 2000
    max_output_bytes: int = 1024 * 1024
    stderr_tail_bytes: int = 4096
    # Between SIGTERM and SIGKILL when a task is cancelled or times out.
    kill_grace: float = 5.0
    callback_backoff_initial: float = 1.0
    callback_backoff_max: float = 60.0
    upload_attempts: int = 8
    download_attempts: int = 8
    http_timeout: float = 30.0
    signature_tolerance: int = 300
    # After a push whose signature does not match the stored secret (an operator rotated
    # it), the dispatcher looks for a newer secret in its state file, else rotates its own
    # by checking in; at most once per this many seconds. 0 turns it off.
    secret_recovery_interval: float = 300.0
    # How long a stop waits for queued callbacks to be delivered.
    shutdown_grace: float = 5.0
    # How many finished Idempotency-Keys are remembered to answer repeated pushes.
    remembered_pushes: int = 10000

    def __post_init__(self) -> None:
        self.controller_url = self.controller_url.rstrip("/")
        self.state_dir = Path(self.state_dir)
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        if self.heartbeat_interval < 1:
            raise ValueError("heartbeat interval must be at least 1 second")
        if not self.request_timeout > 0:
            raise ValueError("request timeout must be positive")
        if not self.request_deadline > 0:
            raise ValueError("request deadline must be positive")
        if self.max_connections < 1:
            raise ValueError("max connections must be at least 1")
        if not self.secret_recovery_interval >= 0:
            raise ValueError("secret recovery interval must be 0 or more")

    def advertised_endpoint(self, bound_port: int | None = None) -> str:
        """The ``endpoint_url`` sent at check-in (without a trailing slash)."""
        if self.endpoint_url:
            return self.endpoint_url.rstrip("/")
        port = bound_port if bound_port is not None else self.listen_port
        return f"http://{self.listen_host}:{port}"


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    try:
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {port!r}") from None


def _parse_labels(values: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"label must be KEY=VALUE, got {part!r}")
            labels[key.strip()] = value.strip()
    return labels


# (flag, config attribute, type, help). Defaults come from DispatcherConfig.
_OPTIONS: list[tuple[str, str, type, str]] = [
    ("--cloud", "cloud", str, "cloud name reported at check-in"),
    ("--capacity", "capacity", int, "tasks run at the same time"),
    ("--heartbeat-interval", "heartbeat_interval", int, "seconds between heartbeats"),
    ("--skill-path", "skill_path", str, "PATH given to skills"),
    ("--max-push-bytes", "max_push_bytes", int, "largest task push body accepted"),
    ("--request-timeout", "request_timeout", float, "seconds before a silent connection closes"),
    ("--request-deadline", "request_deadline", float, "seconds a whole request may take"),
    ("--max-connections", "max_connections", int, "connections served at the same time"),
    ("--max-package-bytes", "max_package_bytes", int, "largest skill package downloaded"),
    ("--max-extracted-bytes", "max_extracted_bytes", int, "largest total extracted size"),
    ("--max-package-files", "max_package_files", int, "most entries in a package"),
    ("--max-output-bytes", "max_output_bytes", int, "largest stdout a skill may print"),
    ("--stderr-tail-bytes", "stderr_tail_bytes", int, "stderr kept for error messages"),
    ("--kill-grace", "kill_grace", float, "seconds between SIGTERM and SIGKILL"),
    ("--callback-backoff-initial", "callback_backoff_initial", float, "first retry delay"),
    ("--callback-backoff-max", "callback_backoff_max", float, "longest retry delay"),
    ("--upload-attempts", "upload_attempts", int, "tries for a result upload"),
    ("--download-attempts", "download_attempts", int, "tries for a skill package download"),
    ("--http-timeout", "http_timeout", float, "timeout of each HTTP call"),
    ("--shutdown-grace", "shutdown_grace", float, "seconds to deliver callbacks on stop"),
    (
        "--secret-recovery-interval",
        "secret_recovery_interval",
        float,
        "least seconds between signing-secret recoveries after mismatched pushes (0: off)",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m dispatcher``."""
    parser = argparse.ArgumentParser(
        prog="python -m dispatcher",
        description="Kohakku reference dispatcher. Every flag --x-y may also be given as "
        f"the environment variable {ENV_PREFIX}X_Y.",
    )
    parser.add_argument("--controller", help="controller base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--client-id", help="OAuth2 client id (scope 'dispatchers')")
    parser.add_argument("--client-secret", help="OAuth2 client secret")
    parser.add_argument("--name", help="dispatcher name (check-in is idempotent by name)")
    parser.add_argument("--listen", type=_parse_listen, help="HOST:PORT to serve pushes on")
    parser.add_argument("--endpoint-url", help="URL the controller pushes to")
    parser.add_argument("--state-dir", help="directory for the state file (signing secret)")
    parser.add_argument(
        "--label", action="append", default=None, help="KEY=VALUE label (repeatable)"
    )
    parser.add_argument("--backends", help="comma-separated backends (only 'local' exists)")
    for flag, _attr, kind, text in _OPTIONS:
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser


def config_from_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[DispatcherConfig, str]:
    """Build the configuration from flags, falling back to environment variables.

    Returns the configuration and the log level. Exits with a usage error (status 2)
    when a required value is missing.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)

    def pick(dest: str) -> str | None:
        value = getattr(args, dest, None)
        if value is not None:
            return value
        return environ.get(ENV_PREFIX + dest.upper()) or None

    required = {
        "controller": "--controller",
        "client_id": "--client-id",
        "client_secret": "--client-secret",
        "name": "--name",
    }
    missing = [flag for dest, flag in required.items() if not pick(dest)]
    if missing:
        parser.error(
            "missing " + ", ".join(missing) + f" (or the {ENV_PREFIX}* environment variables)"
        )
    kwargs: dict[str, object] = {
        "controller_url": pick("controller"),
        "client_id": pick("client_id"),
        "client_secret": pick("client_secret"),
        "name": pick("name"),
    }
    listen = args.listen
    if listen is None and environ.get(ENV_PREFIX + "LISTEN"):
        try:
            listen = _parse_listen(environ[ENV_PREFIX + "LISTEN"])
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    if listen is not None:
        kwargs["listen_host"], kwargs["listen_port"] = listen
    for dest, attr in (("endpoint_url", "endpoint_url"), ("state_dir", "state_dir")):
        if (value := pick(dest)) is not None:
            kwargs[attr] = value
    label_values = args.label
    if label_values is None and environ.get(ENV_PREFIX + "LABEL"):
        label_values = [environ[ENV_PREFIX + "LABEL"]]
    try:
        kwargs["labels"] = _parse_labels(label_values or [])
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if (backends := pick("backends")) is not None:
        kwargs["backends"] = [b.strip() for b in backends.split(",") if b.strip()]
    for flag, attr, kind, _text in _OPTIONS:
        raw = pick(flag[2:].replace("-", "_"))
        if raw is None:
            continue
        try:
            kwargs[attr] = kind(raw)
        except ValueError:
            parser.error(f"{flag} expects {kind.__name__}, got {raw!r}")
    try:
        config = DispatcherConfig(**kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        parser.error(str(exc))
    return config, (pick("log_level") or "INFO").upper()
