"""HoodRun: a self-hostable, multi-chain JSON-RPC provider platform."""

__version__ = "0.1.0"
