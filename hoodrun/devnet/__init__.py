"""A local devnet of anvil nodes for ``hoodrun up --devnet``, the tests and the benchmarks."""

from hoodrun.devnet.anvil import (
    ANVIL_PACKAGE,
    Anvil,
    AnvilError,
    ensure_anvil,
    find_anvil,
    free_port,
)

__all__ = ["ANVIL_PACKAGE", "Anvil", "AnvilError", "ensure_anvil", "find_anvil", "free_port"]
