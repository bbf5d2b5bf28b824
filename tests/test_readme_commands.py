"""Every command in the README's ```bash blocks, as written.

- `make demo` / `make test` are not run here: they are the demo (minutes) and this suite.
- `python -m <module> ARGS` runs in-process as `<module>.main(ARGS)`, the function `-m` calls
  (`--help` also once through a real `python -m`, to prove that path exits 0).
- Commands that need no weights and take seconds run as written and must exit 0.
- The demo and the smoke run take minutes (the demo is `make demo`; the smoke run's tiny path
  is trained end to end by tests/test_pipeline.py): for them this asserts that the command
  parses and validates (`--check` appended).
- A `--check` looks at its work dir too; here it gets a fresh one, so that a run in progress
  (`make demo` holds outputs/demo's lock) or an old outputs/ does not matter.
- Commands that need weights or files that are not here must stop with one message that names
  what they need, and write nothing.
- `/tmp/` in the tiny-model commands becomes this test's temporary folder.
"""

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PYTHON = ".venv/bin/python"


def readme_commands() -> list:
  text = (ROOT / "README.md").read_text()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
      line = line.split(" #")[0].strip()
      if line and not line.startswith("#"):
        commands.append(line)
  return commands


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
  return tmp_path_factory.mktemp("readme")


def _argv(command: str, tmp_root) -> tuple:
  words = shlex.split(command.replace("/tmp/", f"{tmp_root}/"))
  assert words[:2] == [PYTHON, "-m"], command
  return words[2], words[3:]


def _main(module: str, argv: list, capsys) -> tuple:
  """module.main(argv) -> (exit status, stdout, stderr)."""
  try:
    code = importlib.import_module(module).main(argv)
  except SystemExit as stop:
    code = stop.code
  out, err = capsys.readouterr()
  return code or 0, out, err


def _outputs() -> list:
  """The runs in outputs/ (a run in progress may grow its own folder meanwhile)."""
  folder = ROOT / "outputs"
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _needs(command: str) -> str | None:
  """What a command that cannot run here must name in its message, else None."""
  if "my_object_rgba.png" in command:
    return "my_object_rgba.png"
  return None


def _validate_only(command: str) -> bool:
  slow = ("configs/demo.py" in command and "--list_keys" not in command
          and "--check" not in command)
  return slow or ":quick" in command


def test_readme_lists_the_commands_this_test_knows():
  commands = readme_commands()
  assert any("--help" in c for c in commands) and any("--list_keys" in c for c in commands)
  assert any("configs/demo.py" in c and "--check" not in c and "--list_keys" not in c
             for c in commands)
  for command in commands:
    assert command.startswith(("make ", PYTHON + " -m ")), command


def test_help_exits_zero_through_python_dash_m():
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--help"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "--list_keys" in proc.stdout and not proc.stderr


@pytest.mark.parametrize("command", [c for c in readme_commands() if not c.startswith("make")])
def test_readme_command(command, tmp_root, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  if "/tmp/tiny" in command:   # first the tiny-model writers the command relies on
    for writer in [c for c in readme_commands() if "tiny_models" in c and c != command]:
      module, argv = _argv(writer, tmp_root)
      if not Path(argv[-1]).exists():
        assert _main(module, argv, capsys)[0] == 0
  module, argv = _argv(command, tmp_root)
  if _validate_only(command):
    argv += ["--check"]
  if "--check" in argv:   # the work dir's state is not the README's: a fresh one
    argv += [f"--config.workdir={tmp_path / 'work'}"]
  before = _outputs()
  code, out, err = _main(module, argv, capsys)
  need = _needs(command)
  if need is None:
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
  else:
    assert code == 2 and need in err and err.startswith("error:"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert _outputs() == before and not (tmp_path / "work").exists()   # nothing written
  if "--list_keys" in argv:
    assert "coarse_nerf.train.steps = 2000  # optimisation steps" in out
  if "--check" in argv:
    assert out.startswith("ok: ")
