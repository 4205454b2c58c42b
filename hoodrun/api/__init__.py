"""The api role's HTTP surface: the admin API (``hoodrun.api.app.create_api_app``) and its models.

Kept import-light: the CLI uses ``hoodrun.api.models`` for its ``--json`` output without loading
FastAPI.
"""
