"""The Kohakku reference dispatcher.

A small, standalone execution agent built only from the documented contracts
(``docs/write-a-dispatcher.md``) and :mod:`kohakku_controller.signing`. It checks in with
the controller, heartbeats, accepts signed task pushes, runs each skill package's
``metadata.entrypoint`` through a :class:`~dispatcher.backends.Backend` and reports the
outcome through signed callbacks.

Run it with ``python -m dispatcher --help`` from the ``example_project/`` directory.
"""

from dispatcher.app import Dispatcher
from dispatcher.config import DispatcherConfig

__all__ = ["Dispatcher", "DispatcherConfig"]
__version__ = "0.1.0"
