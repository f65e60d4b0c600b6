"""Model registry of the app: each domain keeps its models in its own package."""

from .dispatchers.models import Dispatcher
from .oauth import ClientScopes
from .skills.models import Skill, SkillVersion
from .tasks.models import Task

__all__ = ["ClientScopes", "Dispatcher", "Skill", "SkillVersion", "Task"]
