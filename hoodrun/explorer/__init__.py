"""What a project sees of its own traffic: its RPC request records (the request explorer) and the
application logs it sends (``POST /logs/v1``): ingestion with validation, fingerprints and
backpressure, search, top errors and stats. Stored in the analytics store (chDB or ClickHouse)."""
