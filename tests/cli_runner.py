"""Test helper: run the ``hwlab`` command line in-process and check the one-line error convention."""
from hwlab.cli import main


def run(capsys, *argv):
    """``main(argv)`` in-process: (exit status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(capsys, *argv) -> str:
    """stderr of a command that must fail: exit status 2, nothing on stdout, one ``hwlab: error:`` line."""
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == "", (status, out, err)
    assert err.startswith("hwlab: error: ") and err.count("\n") == 1, err
    return err
