from tests._smtp import smtp_sink  # noqa: F401 (fixture)
from tests._stores import (  # noqa: F401 (fixtures)
    clock,
    database_url,
    pg_clean,
    pg_migrated,
    sqlite_template,
    store,
)
from tests.identity.support import base_config, config, identity  # noqa: F401 (fixtures)
