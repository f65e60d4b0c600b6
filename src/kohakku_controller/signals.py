"""Signals the controller sends. Each is sent after the transaction that caused it commits.

Receivers get ``sender`` (the model class) and the keyword arguments listed beside each signal.
"""

from django.dispatch import Signal

#: A dispatcher checked in for the first time. kwargs: ``dispatcher``.
dispatcher_registered = Signal()
#: A dispatcher missed its heartbeats and is now offline. kwargs: ``dispatcher``.
dispatcher_lost = Signal()
#: A task reached ``running``. kwargs: ``task``.
task_started = Signal()
#: A task reached a final state. kwargs: ``task``.
task_finished = Signal()
#: A dispatcher is about to be deleted. kwargs: ``dispatcher``, ``force``. Sent before the
#: delete (not after commit); each receiver returns how many unfinished tasks it holds for
#: that dispatcher and, when ``force`` is true, requeues them.
dispatcher_deleting = Signal()
