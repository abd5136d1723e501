"""One writer per run dir: a training holds <run dir>/run.lock while it runs, so the same
command launched again meanwhile stops at once with one line naming the process (pid and host)
that holds the run dir, instead of a second process writing the same files.

The lock is an fcntl.flock on the file, taken without waiting: the kernel releases it when
the holding process ends in any way (kill -9 included), so a lock left by a dead process is
taken over by the next run; the file's content (pid, host, start time) only names the holder
in the message. Where the file system has no flock, the content decides: a lock whose
process is gone (same host, pid not alive) is taken over. Released, and the file removed, when
the training ends. Only rank zero takes it: the other processes of a multi-process run share
rank zero's run dir. Imports no torch: lmlab-train catches RunDirLocked at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "run.lock"
# how long a lock whose process is gone may still be held (by its forked workers, ending)
ORPHAN_WAIT = 10.0


class RunDirLocked(BaseException):
    """The run dir is held by another process. Not an Exception: the run that meets it must
    record nothing in the run dir (its status.json is the running one's); lmlab-train
    prints it as one line and exits 2."""

    def __init__(self, path: Path, holder: dict):
        super().__init__(path, holder)
        self.path, self.holder = path, holder

    def __str__(self) -> str:
        pid, host = self.holder.get("pid", "?"), self.holder.get("host", "?")
        since = self.holder.get("started", "")
        since = f" since {since}" if since else ""
        return (
            f"{self.path.parent}: in use by process {pid} on host {host}{since} (lock: "
            f"{self.path}); the same command is already running: wait for it, or stop it "
            f"(kill {pid} saves a checkpoint to resume from)"
        )


class RunLock:
    """A taken lock; release() frees it and removes the file."""

    def __init__(self, path: Path, fd: int, made_dir: bool):
        self.path, self.fd, self.made_dir = path, fd, made_dir

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: no other process locks the old file
        os.close(self.fd)
        self.fd = -1
        if self.made_dir:  # a run that failed before writing anything leaves no dir behind
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()


def holder_record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def read_holder(path: Path, tries: int = 20) -> dict:
    """The lock file's content; waits a little for a holder that has not written it yet."""
    for _ in range(tries):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
        time.sleep(0.01)
    return {}


def is_alive(holder: dict) -> bool:
    """Whether the holder named in a lock file runs: unknown (True) on another host."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if pid == os.getpid():  # this process (another lock of its own)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def acquire(run_dir: str | Path) -> RunLock:
    """Takes <run dir>/run.lock, creating the run dir; RunDirLocked when a live process
    holds it."""
    run_dir = Path(run_dir)
    made_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(holder_record()) + "\n").encode())
    os.fsync(fd)
    return RunLock(path, fd, made_dir)


def _lock(fd: int, path: Path, orphan_wait: float = ORPHAN_WAIT) -> None:
    deadline = time.monotonic() + orphan_wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = read_holder(path)
            if is_alive(holder) or time.monotonic() > deadline:
                raise RunDirLocked(path, holder) from None
            time.sleep(0.2)  # its holder is gone, a forked data loader worker is ending
        except OSError as e:  # no flock on this file system: the content decides
            return _check_content(e, path)


def _check_content(error: OSError, path: Path) -> None:
    if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        raise error
    holder = read_holder(path, tries=1)
    if holder and is_alive(holder):
        raise RunDirLocked(path, holder) from None


@contextlib.contextmanager
def hold(run_dir: str | Path):
    """The run dir's lock for the block (rank zero only; the others share its run dir)."""
    from lmlab.sweeps import is_rank_zero

    if not is_rank_zero():
        yield None
        return
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        lock.release()
