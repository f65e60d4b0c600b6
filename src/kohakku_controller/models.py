"""Model registry of the app: each domain keeps its models in its own package."""

from .oauth import ClientScopes

__all__ = ["ClientScopes"]
