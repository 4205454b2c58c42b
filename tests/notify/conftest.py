from tests._stores import (  # noqa: F401 (fixtures)
    clock,
    database_url,
    pg_clean,
    pg_migrated,
    sqlite_template,
    store,
)
