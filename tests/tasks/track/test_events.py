"""tasks.track.events: events numbered within their kind across resumes, spikes against a running median."""

from tasks.track.events import LOSS_SPIKE, SKIPPED_UPDATE, EventLog, SpikeWatch, read_events, summary


def test_events_are_counted_per_kind_and_a_resume_drops_those_past_its_step(tmp_path):
    log = EventLog(tmp_path / "events", {"sweep": "s", "run_id": "r"})
    for step, kind in [(3, SKIPPED_UPDATE), (7, LOSS_SPIKE), (9, SKIPPED_UPDATE)]:
        log.record(step, kind, 1.0, "why", 1000 + step)
    log.flush()
    assert [e["count"] for e in read_events(log.dir).to_pylist()] == [1, 1, 2]
    resumed = EventLog(tmp_path / "events", {"sweep": "s", "run_id": "r"})
    resumed.truncate(after_step=8)  # the step-9 event happens again after the resume: counted once
    resumed.record(9, SKIPPED_UPDATE, 1.0, "why", 2000)
    resumed.flush()
    table = read_events(log.dir)
    assert [(e["step"], e["count"]) for e in table.to_pylist()] == [(3, 1), (7, 1), (9, 2)]
    assert summary(table) == {
        "skipped_updates": 2,
        "loss_spikes": 1,
        "events": "skipped update at 3, 9; loss spike at 7",
    }


def test_a_spike_is_judged_against_the_median_before_it():
    watch = SpikeWatch()
    falling = [6.0, 5.5, 5.0, 4.8, 4.6, 4.5, 4.4]
    assert [watch.spike(x) for x in falling] == [None] * len(falling)  # a falling loss never spikes
    assert watch.spike(float("nan")) is None
    assert round(watch.spike(48.0), 1) == 10.0  # 48 over the median 4.8
    assert watch.spike(4.3) is None  # one spike does not move the median
    assert SpikeWatch().spike(100.0) is None  # too few steps yet to judge
