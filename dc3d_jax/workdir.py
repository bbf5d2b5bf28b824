"""A work dir belongs to one run.

    check_path(text) -> Path          refuses an empty path, a file, an unwritable place
    Lock(workdir).acquire(command)    one process at a time (fcntl.flock on <workdir>/.lock);
                                      WorkdirError names the holder's pid, start and command
    holder(workdir) -> dict | None    who holds the lock now (without taking it)
    provenance_differences(workdir, new) -> ["reference: ...", "shape key x: 1 -> 2", ...]
    move_aside(workdir) -> Path       --restart: <workdir>.old-<time>; nothing is deleted
    log_invocation / total_wall_s     <workdir>/invocations.jsonl: one line per invocation

The lock file exists only while a run holds it (it is removed on release), and holds the
holder's pid, start time and command. A kernel flock is released when its process dies, so a
run killed with SIGKILL leaves a file that the next run simply takes over.
`provenance.json` records what the run was made from: the reference's identity (sha256 of the
image and depth files, or the oracle object / stage-0 settings), the prompt, and the
shape-determining config keys (config_rules.Section.shape_keys). An invocation killed by
SIGKILL leaves no line in invocations.jsonl, so its time is not counted in wall_time_s.
"""

import errno
import fcntl
import json
import os
import shlex
import sys
import time
from pathlib import Path

from dc3d_jax import errors
from dc3d_jax.io import writers

LOCK = ".lock"
PROVENANCE = "provenance.json"
INVOCATIONS = "invocations.jsonl"


def command_line() -> str:
  """This process's command as a person would type it (`python -m experiments.run ...`)."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  head = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
  return shlex.join(head + sys.argv[1:])


def check_path(text) -> Path:
  """The work dir as a Path, or WorkdirError when it cannot be one (nothing is created)."""
  if not isinstance(text, str) or not text.strip():
    raise errors.WorkdirError("config workdir is empty: give the run's output folder, e.g. "
                              "--config.workdir=outputs/my_run")
  path = Path(text).expanduser()
  if path.exists() and not path.is_dir():
    raise errors.WorkdirError(f"config workdir={text!r}: {path} exists and is not a folder; "
                              "choose another --config.workdir")
  existing = next(p for p in (path, *path.absolute().parents) if p.exists())
  if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
    raise errors.WorkdirError(f"config workdir={text!r}: cannot write in {existing}; choose "
                              "a writable --config.workdir")
  return path


def _in_use(workdir: Path, info: dict) -> errors.WorkdirError:
  return errors.WorkdirError(
      f"work dir {workdir} is in use by another run (pid {info.get('pid', '?')}, started "
      f"{info.get('started', '?')}, command: {info.get('command', '?')}); wait for it to "
      "finish or stop it, or choose another --config.workdir")


def _read_info(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


class Lock:
  """One process per work dir. Creates the work dir if needed and remembers that, so a run
  that stops before writing anything can leave the file system as it found it."""

  def __init__(self, workdir: Path):
    self.workdir = Path(workdir)
    self.created = []   # folders this lock created, outermost first
    self._fd = None

  @property
  def path(self) -> Path:
    return self.workdir / LOCK

  def _make_dirs(self) -> None:
    missing = [p for p in (self.workdir, *self.workdir.absolute().parents) if not p.exists()]
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.created = list(reversed(missing))

  def _try_lock(self) -> bool:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    try:   # the file may have been removed by its previous holder after we opened it
      same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
    except FileNotFoundError:
      same = False
    if not same:
      os.close(fd)
      return self._try_lock()
    self._fd = fd
    return True

  def acquire(self, command: str | None = None) -> "Lock":
    self._make_dirs()
    if not self._try_lock():
      info = _read_info(self.path)
      self._remove_created()
      raise _in_use(self.workdir, info)
    info = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command or command_line()}
    os.ftruncate(self._fd, 0)
    os.write(self._fd, (json.dumps(info) + "\n").encode())
    return self

  def move_aside(self) -> Path:
    """Renames the (locked) work dir to <workdir>.old-<time>; the lock stays with it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = self.workdir.with_name(f"{self.workdir.name}.old-{stamp}")
    n = 1
    while aside.exists():
      n += 1
      aside = self.workdir.with_name(f"{self.workdir.name}.old-{stamp}-{n}")
    os.rename(self.workdir, aside)
    self.release_at(aside)
    return aside

  def release_at(self, folder: Path) -> None:
    if self._fd is None:
      return
    (Path(folder) / LOCK).unlink(missing_ok=True)
    os.close(self._fd)
    self._fd = None

  def release(self, *, remove_created: bool = False) -> None:
    """Removes the lock file and unlocks; with remove_created, also the folders this lock
    created if they are empty again."""
    self.release_at(self.workdir)
    if remove_created:
      self._remove_created()

  def _remove_created(self) -> None:
    for folder in reversed(self.created):
      try:
        folder.rmdir()
      except OSError:
        break
    self.created = []


def holder(workdir: Path) -> dict | None:
  """The lock holder's info if another process holds the work dir now, else None."""
  path = Path(workdir) / LOCK
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  except BlockingIOError:
    return _read_info(path) or {"pid": "?"}
  finally:
    os.close(fd)


def check_free(workdir: Path) -> None:
  info = holder(workdir)
  if info is not None:
    raise _in_use(workdir, info)


# ------------------------------------------------------------------------------ provenance

def read_provenance(workdir: Path) -> dict | None:
  path = Path(workdir) / PROVENANCE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as err:
    raise errors.ResumeError(f"{path}: cannot read the run's provenance ({err}); re-run with "
                             "--restart to start afresh (the old run is moved aside)") from None


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 70 else text[:67] + "..."


def _changed(name: str, old: dict, new: dict, keys) -> list:
  return [f"{name}{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in sorted(keys)
          if old.get(k) != new.get(k)]


def provenance_differences(old: dict | None, new: dict) -> list:
  """What differs between a work dir's record and this run's, as readable lines. A shape key
  or prior the old record lacks (a stage or slot added since) is not a difference."""
  if old is None:
    return []
  new = json.loads(json.dumps(writers.to_python(new)))   # tuples -> lists, as stored
  old_ref, new_ref = old.get("reference", {}), new.get("reference", {})
  old_shape, new_shape = old.get("shape", {}), new.get("shape", {})
  old_priors, new_priors = old.get("priors", {}), new.get("priors", {})
  return (_changed("reference.", old_ref, new_ref, set(old_ref) | set(new_ref))
          + _changed("", old, new, ["prompt"])
          + _changed("shape key ", old_shape, new_shape, set(old_shape) & set(new_shape))
          + _changed("prior ", old_priors, new_priors, set(old_priors) & set(new_priors)))


def refuse_if_different(workdir: Path, new: dict) -> None:
  diff = provenance_differences(read_provenance(workdir), new)
  if diff:
    raise errors.ResumeError(
        f"work dir {workdir} holds a run made from other inputs, so it cannot be resumed ("
        + "; ".join(diff[:6]) + (f"; {len(diff) - 6} more" if len(diff) > 6 else "")
        + "). Re-run with --restart to start afresh (the old run is moved aside), or choose "
        "another --config.workdir")


def write_provenance(workdir: Path, record: dict) -> None:
  old = read_provenance(workdir) or {}
  merged = {**old, **record, **{k: {**old.get(k, {}), **record.get(k, {})}
                                for k in ("shape", "priors")}}
  writers.save_json(Path(workdir) / PROVENANCE, merged)


# --------------------------------------------------------------------------- invocations

def total_wall_s(workdir: Path) -> float:
  """Wall time of the invocations logged so far."""
  path = Path(workdir) / INVOCATIONS
  if not path.exists():
    return 0.0
  total = 0.0
  for line in path.read_text().splitlines():
    try:
      total += float(json.loads(line).get("wall_s", 0.0))
    except (ValueError, AttributeError):
      continue
  return total


def log_invocation(workdir: Path, started: float, outcome: str) -> None:
  writers.append_jsonl(Path(workdir) / INVOCATIONS, {
      "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
      "wall_s": round(time.time() - started, 1), "outcome": outcome,
      "command": command_line()})


def is_disk_full(exc: BaseException) -> bool:
  """True if `exc` or an exception it came from says the disk (or quota) is full."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(exc):
      return True
    exc = exc.__cause__ or exc.__context__
  return False
