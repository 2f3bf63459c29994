"""An exit from user code is an error naming where it exited, never a silent success."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from spray.errors import BadInputError
from spray.usercode import UserCodeExit, guarded

REPO = Path(__file__).resolve().parents[1]


def _exits_in_a_method() -> None:
    class Model:
        def forward(self) -> None:
            sys.exit(0)

    Model().forward()


def test_guarded_turns_an_exit_into_an_error_naming_module_qualname_file_and_line():
    line = _exits_in_a_method.__code__.co_firstlineno + 3
    with pytest.raises(UserCodeExit) as info:
        with guarded("model 'm:f'"):
            _exits_in_a_method()
    assert isinstance(info.value, BadInputError)
    assert str(info.value) == (
        f"model 'm:f': user code exited with sys.exit(0) in "
        f"{__name__}:_exits_in_a_method.<locals>.Model.forward ({__file__}:{line}); spray treats an "
        "exit as a failure, not as success: return, or raise an exception that says what went wrong"
    )


@pytest.mark.parametrize("code", [None, 1, "text"])
def test_guarded_shows_the_exit_code_the_user_code_chose(code):
    with pytest.raises(UserCodeExit, match=rf"sys\.exit\({re.escape(repr(code))}\) in {__name__}:"):
        with guarded("x"):
            raise SystemExit(code)


def test_guarded_leaves_interrupts_and_other_errors_alone():
    with pytest.raises(KeyboardInterrupt):
        with guarded("x"):
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="^boom$"):
        with guarded("x"):
            raise ValueError("boom")


@pytest.mark.parametrize("model", ["exits", "exiting_forward_model"])
def test_the_spray_process_exits_2_when_the_model_calls_sys_exit_0(model, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spray.cli", "attribute", "--model", f"tests.data.factories:{model}",
         "--data", "tests.data.factories:tiny_dataset", "--store", str(tmp_path / "s.h5")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "user code exited with sys.exit(" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "s.h5").exists()
