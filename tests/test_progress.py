"""Progress: a bar only on a terminal, a few plain lines otherwise (issue 12, item 15)."""

import io

from facenet.progress import PlainProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with progress_bar(1000, "embedding", unit="img", file=out) as bar:
        assert isinstance(bar, PlainProgress)
        for _ in range(1000):
            bar.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 2 <= len(lines) <= 11
    assert lines[0].startswith("embedding: 100/1000 img (10%)") and "ETA" in lines[0]
    assert lines[-1].startswith("embedding: 1000/1000 img (100%)")


def test_a_bar_on_a_terminal_and_nothing_when_disabled():
    out = _Terminal()
    with progress_bar(3, "align", file=out) as bar:
        assert not isinstance(bar, PlainProgress)
        bar.update(3)
    assert "\r" in out.getvalue()
    quiet = io.StringIO()
    with progress_bar(3, "align", enabled=False, file=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_dataset_generation_in_a_log_prints_a_few_lines(tmp_path, capsys):
    from facenet.data.synthetic import write_dataset

    write_dataset(tmp_path / "ds", num_identities=2, images_per_identity=3, size=48)
    err = capsys.readouterr().err
    assert "synthetic faces: 6/6 img (100%)" in err and "\r" not in err


def test_plain_lines_carry_the_postfix_as_tqdm_does():
    out = io.StringIO()
    with progress_bar(10, "training", unit="step", file=out) as bar:
        for step in range(10):
            bar.update()
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    assert out.getvalue().splitlines()[-1].endswith("(loss=0.100)")


def test_a_slow_job_in_a_log_prints_at_least_once_a_minute(monkeypatch):
    """facenet demo's training printed nothing for 4 minutes in a log: a tenth of it took that long."""
    import facenet.progress as progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with PlainProgress(850, "training", unit="step", file=out) as bar:
        for _ in range(84):  # under a tenth of the work, 3 s a step
            clock[0] += 3.0
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 84 * 3 // progress.QUIET_AT_MOST_S  # one a minute, and the last one
    assert lines[0].startswith("training: 20/850 step (2%)")
