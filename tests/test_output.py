"""The run folder: atomic replacement, clean-up of interrupted runs, the lock."""

from __future__ import annotations

import pytest

from reportgen.errors import LockedError, OutputError
from reportgen.output import prepare_report_dir, report_lock, write_run_folder


def _writer(content: str, fail_after_first: bool = False):
    def write(folder):
        (folder / "a.txt").write_text(content)
        if fail_after_first:
            raise RuntimeError("writer failed halfway")
        (folder / "b.txt").write_text(content)
        return [folder / "a.txt", folder / "b.txt"]

    return write


def test_paths_point_into_the_final_folder(tmp_path):
    """The returned paths are in <report>/<name>, not in the temporary folder."""
    paths = write_run_folder(tmp_path, "2024-01-31", _writer("new"))
    assert paths == [tmp_path / "2024-01-31" / "a.txt", tmp_path / "2024-01-31" / "b.txt"]
    assert all(p.read_text() == "new" for p in paths)


def test_a_failing_writer_leaves_the_previous_run_untouched(tmp_path):
    """Half-written output never replaces a complete run folder."""
    write_run_folder(tmp_path, "2024-01-31", _writer("old"))
    with pytest.raises(RuntimeError):
        write_run_folder(tmp_path, "2024-01-31", _writer("new", fail_after_first=True))
    assert (tmp_path / "2024-01-31" / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2024-01-31"]


def test_disk_errors_become_output_errors(tmp_path):
    """An OSError while writing is reported as exit code 6, naming the folder."""

    def write(folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="disk full") as info:
        write_run_folder(tmp_path, "x", write)
    assert info.value.exit_code == 6


def test_stale_temporaries_are_removed_under_the_lock(tmp_path):
    """Folders left by a killed run are removed when the next run takes the lock."""
    report_dir = prepare_report_dir(tmp_path, "report")
    (report_dir / ".tmp-99999").mkdir()
    (report_dir / ".old-99999").mkdir()
    with report_lock(report_dir):
        assert sorted(p.name for p in report_dir.iterdir()) == [".lock"]


def test_a_second_lock_fails_at_once(tmp_path):
    """Two runs of one report: the second gets LockedError (exit 7)."""
    report_dir = prepare_report_dir(tmp_path, "report")
    refused = pytest.raises(LockedError, match="another reportgen run")
    with report_lock(report_dir), refused as info, report_lock(report_dir):
        pass
    assert info.value.exit_code == 7
    with report_lock(report_dir):  # released again
        pass


def test_unwritable_output_root_is_refused_before_work(tmp_path):
    """A root below a regular file cannot be created: OutputError naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="not writable"):
        prepare_report_dir(blocker / "out", "report")
