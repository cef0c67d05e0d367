"""The suite's failure log (``MMLOCALMAMBA_FAILURE_LOG``, see ``conftest.pytest_runtest_logreport``):
tools/dev/gpu_checks.sh relies on it to keep the report of a failure from a pytest process that
is stopped at its time limit before it prints its summary."""
from types import SimpleNamespace

from .conftest import pytest_runtest_logreport


def _report(failed, nodeid='tests/test_x.py::test_y', when='call', text='assert 7 == 6'):
    return SimpleNamespace(failed=failed, nodeid=nodeid, when=when, longreprtext=text)


def test_failures_are_appended_as_they_happen(tmp_path, monkeypatch):
    log = tmp_path / 'pytest_compile.failures'
    monkeypatch.setenv('MMLOCALMAMBA_FAILURE_LOG', str(log))
    pytest_runtest_logreport(_report(False))
    assert not log.exists()
    pytest_runtest_logreport(_report(True))
    pytest_runtest_logreport(_report(True, 'tests/test_x.py::test_z', 'setup', 'fixture broke'))
    text = log.read_text()
    assert text.index('==== tests/test_x.py::test_y (call)\nassert 7 == 6') < text.index(
        '==== tests/test_x.py::test_z (setup)\nfixture broke')


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv('MMLOCALMAMBA_FAILURE_LOG', raising=False)
    monkeypatch.chdir(tmp_path)
    pytest_runtest_logreport(_report(True))
    assert not list(tmp_path.iterdir())
