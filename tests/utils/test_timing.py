"""Stage timers and peak memory for timings.json."""

import resource

import pytest

from d4s.utils import timing
from d4s.utils.timing import StageTimer, peak_memory


def test_stages_add_up_in_first_run_order(monkeypatch):
    clock = iter([0.0, 1.5, 2.0, 2.25, 10.0, 11.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    timer = StageTimer("cpu")
    with timer("sampling"):
        pass
    with timer("ldrm"):
        pass
    with pytest.raises(RuntimeError), timer("sampling"):  # a failing stage still counts its time
        raise RuntimeError
    assert timer.seconds == {"sampling": 2.5, "ldrm": 0.25}
    assert list(timer.seconds) == ["sampling", "ldrm"]


def test_peak_memory_reports_the_resident_high_water_mark_in_gib():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peaks = peak_memory("cpu")
    assert set(peaks) == {"peak_rss_gib"}
    assert peaks["peak_rss_gib"] >= before > 0
