"""The dispatcher's fetch pacing: gather while records flow, answer at once after a lull."""

from __future__ import annotations

from dispatcher.fetch_pacing import FetchPacer, FetchSettings


def test_a_new_consumer_starts_idle_answering_at_the_first_record():
    """Before any poll the settings are min 1 byte and the idle wait, and reset() returns to them."""
    p = FetchPacer(linger_ms=10, batch_bytes=65536, idle_wait_ms=500)
    assert p.current == FetchSettings(1, 500) and p.current.mode == "idle"
    p.after_poll(True, 0.0)
    assert p.reset() == FetchSettings(1, 500) and p.current.mode == "idle"
    assert p.after_poll(False, 0.05) is None  # reset also forgot the last record's time


def test_records_make_fetches_gather_and_a_lull_of_two_lingers_makes_them_idle():
    """A poll with records switches to (batch bytes, linger) once; empty polls within two lingers
    change nothing; the first empty poll two lingers after the last record switches back."""
    p = FetchPacer(linger_ms=200, batch_bytes=65536, idle_wait_ms=500)
    assert p.after_poll(False, -5.0) is None  # never had records: idle already
    assert p.idle_after_s == 0.4
    assert p.after_poll(True, -0.1) == FetchSettings(65536, 200)
    assert p.current.mode == "busy" and p.switches == 1
    assert p.after_poll(True, 0.0) is None  # already busy
    assert p.after_poll(False, 0.399) is None  # the broker may still hold a fetch
    assert p.after_poll(False, 0.4) == FetchSettings(1, 500)  # exactly two lingers
    assert p.current.mode == "idle" and p.switches == 2
    assert p.after_poll(False, 20.0) is None


def test_a_short_linger_still_waits_one_poll_timeout_before_going_idle():
    """With a 10 ms linger the lull is at least the poll loop's 100 ms timeout, not 20 ms."""
    p = FetchPacer(linger_ms=10, batch_bytes=4096, idle_wait_ms=300)
    p.after_poll(True, 1.0)
    assert p.after_poll(False, 1.099) is None
    assert p.after_poll(False, 1.1) == FetchSettings(1, 300)


def test_the_smallest_linger_and_batch_still_pace():
    """A 1 ms linger with a 2-byte batch is pacing: records switch the fetches to it."""
    p = FetchPacer(linger_ms=1, batch_bytes=2, idle_wait_ms=500)
    assert p.after_poll(True, 0.0) == FetchSettings(2, 1)


def test_linger_zero_or_a_one_byte_batch_turns_pacing_off():
    """Without a linger, or with a 1-byte batch, records never change the settings."""
    for linger_ms, batch_bytes in ((0, 65536), (10, 1)):
        p = FetchPacer(linger_ms=linger_ms, batch_bytes=batch_bytes, idle_wait_ms=500)
        assert p.after_poll(True, 0.0) is None and p.current == FetchSettings(1, 500)
        assert p.switches == 0
