"""Model registry of the app: each domain keeps its models in its own package."""

from .dispatchers.models import Dispatcher
from .oauth import ClientScopes
from .skills.models import Skill, SkillVersion
from .tasks.models import Task, TaskEvent
from .webhooks.models import Delivery
from .workflows.models import Workflow

__all__ = [
    "ClientScopes",
    "Delivery",
    "Dispatcher",
    "Skill",
    "SkillVersion",
    "Task",
    "TaskEvent",
    "Workflow",
]
