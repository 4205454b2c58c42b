"""The local spool: batches that could not be written wait here, in order, as Arrow IPC files.

Append-only: each batch is one file named by a sequence number, written to a temporary name,
fsynced and renamed, so a crash leaves either a whole batch or none. Replay takes the oldest
first and deletes a file only after its batch was written (the store de-duplicates a batch written
twice, so a crash between the write and the delete doubles nothing).

Several processes on one machine (gateway workers) share a spool directory: each claims a
numbered subdirectory under a lock (``Spool.claim``), and a process started after a crash claims
the dead one's subdirectory, with the batches it left, and replays them.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

import pyarrow as pa

__all__ = ["Spool"]

_SUFFIX = ".arrow"


class Spool:
    def __init__(self, directory: Path, lock: IO[bytes] | None = None) -> None:
        self.directory = directory
        self._lock = lock  # held open for the process's life: the claim on the directory
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.tmp"):  # a write cut off by a crash
            stale.unlink(missing_ok=True)
        self._files = sorted(directory.glob("*" + _SUFFIX))
        self._next = int(self._files[-1].stem) + 1 if self._files else 1

    @classmethod
    def claim(cls, base: Path) -> Spool:
        """The first numbered subdirectory of ``base`` no other live process holds."""
        base.mkdir(parents=True, exist_ok=True)
        number = 0
        while True:
            directory = base / str(number)
            directory.mkdir(exist_ok=True)
            lock = open(directory / "lock", "ab")  # held until the process ends
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                number += 1
                continue
            return cls(directory, lock)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __len__(self) -> int:
        return len(self._files)

    def rows(self) -> int:
        return sum(self.read(path).num_rows for path in self._files)

    def append(self, table: pa.Table) -> Path:
        path = self.directory / f"{self._next:012d}{_SUFFIX}"
        self._next += 1
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            with pa.ipc.new_file(handle, table.schema) as writer:
                writer.write_table(table)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.rename(path)
        self._files.append(path)
        return path

    def oldest(self) -> Path | None:
        return self._files[0] if self._files else None

    @staticmethod
    def read(path: Path) -> pa.Table:
        return pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._files.remove(path)
