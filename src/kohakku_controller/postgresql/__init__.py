"""A PostgreSQL database backend: Django's, with a health check that costs no round trip.

Use it as ``DATABASES["default"]["ENGINE"] = "kohakku_controller.postgresql"``.
"""
