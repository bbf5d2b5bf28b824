"""The project's known failures: things a user can fix, as opposed to bugs.

`experiments/run.py` prints a `Dc3dError` as one message (no traceback; DC3D_TRACEBACK=1 or
--traceback shows it) and exits with the error's `exit_code`. Every other exception is a bug
and keeps its traceback. A message names the culprit (a config key or a file path), says what
was expected and how to fix it.

The subclasses also derive from the built-in type callers would naturally catch (ValueError,
FileNotFoundError, ...), so `except ValueError` keeps working.
"""


class Dc3dError(Exception):
  """Base class: a known, user-fixable failure."""
  exit_code = 2


class ConfigError(Dc3dError, ValueError):
  """A config key is unknown, or its value has the wrong type or range."""


class InputError(Dc3dError, ValueError):
  """A reference image, depth map or other user input cannot be used."""


class ModelError(Dc3dError, ValueError):
  """Model weights are missing, incomplete, corrupt or of an unsupported kind."""


class ModelNotFound(ModelError, FileNotFoundError):
  """Model files are not where the config says (nothing is ever downloaded)."""


class AssetError(Dc3dError, RuntimeError):
  """An offline asset (u2netp, LPIPS weights, testbed meshes) is missing or cannot be fetched."""


class WorkdirError(Dc3dError, RuntimeError):
  """The work dir is locked by another run, not writable, full, or holds a different run."""


class ResumeError(Dc3dError, RuntimeError):
  """A checkpoint or previous stage cannot be resumed from (missing, or of other shapes)."""


class NonFiniteError(Dc3dError, FloatingPointError):
  """Training produced NaN/Inf; the message says where and what to try."""
  exit_code = 3


class Interrupted(Dc3dError):
  """The user stopped the run (Ctrl-C); the message says where and how to resume."""
  exit_code = 130   # 128 + SIGINT, as shells report it
