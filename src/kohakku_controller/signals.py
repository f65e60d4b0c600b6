"""Signals the controller sends. Each is sent after the transaction that caused it commits,
except ``dispatcher_deleting``, which lets receivers veto a deletion.

Receivers get ``sender`` (the model class) and the keyword arguments listed beside each signal.
"""

from django.dispatch import Signal

#: A dispatcher checked in for the first time. kwargs: ``dispatcher``.
dispatcher_registered = Signal()
#: A dispatcher missed its heartbeats and is now offline. kwargs: ``dispatcher``.
dispatcher_lost = Signal()
#: A dispatcher is about to be deleted. Sent synchronously inside the deleting transaction
#: (not after commit), so receivers can veto or clean up. kwargs: ``dispatcher``, ``force``.
#: A receiver returns the number of unfinished tasks on the dispatcher (``0`` if none); the
#: deletion is refused with 409 when the sum is positive and ``force`` is false. On a
#: forced deletion, receivers requeue those tasks themselves before returning.
dispatcher_deleting = Signal()
#: A task reached ``running``. kwargs: ``task``.
task_started = Signal()
#: A task reached a final state. kwargs: ``task``.
task_finished = Signal()
