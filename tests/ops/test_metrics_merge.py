"""`serve`'s intake process adds its workers child's families to its own /metrics (ops.metrics.merge_exposition)."""
from __future__ import annotations

from ops.metrics import merge_exposition

OWN = """# HELP hcmc1022_stage_jobs_total Jobs handled.
# TYPE hcmc1022_stage_jobs_total counter
# HELP hcmc1022_store_up 1 when the store answered.
# TYPE hcmc1022_store_up gauge
hcmc1022_store_up 1.0
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.0e+08
"""
CHILD = """# HELP hcmc1022_stage_jobs_total Jobs handled.
# TYPE hcmc1022_stage_jobs_total counter
hcmc1022_stage_jobs_total{outcome="done",stage="classify"} 3.0
# HELP hcmc1022_store_up 1 when the store answered.
# TYPE hcmc1022_store_up gauge
hcmc1022_store_up 0.0
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 7.0e+08
# HELP hcmc1022_calendar_overlay_last_year Last year the calendar knows.
# TYPE hcmc1022_calendar_overlay_last_year gauge
hcmc1022_calendar_overlay_last_year 2026.0
"""


def samples(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_childs_counts_fill_what_this_process_has_none_of_and_each_family_appears_once() -> None:
    merged = merge_exposition(OWN, CHILD)
    got = samples(merged)
    assert got['hcmc1022_stage_jobs_total{outcome="done",stage="classify"}'] == "3.0"  # only the child counted
    assert got["hcmc1022_store_up"] == "1.0"  # both have it: this process's
    assert got["process_resident_memory_bytes"] == "1.0e+08"
    assert got["hcmc1022_calendar_overlay_last_year"] == "2026.0"  # only the child has it
    for name in ("hcmc1022_stage_jobs_total", "hcmc1022_store_up", "process_resident_memory_bytes",
                 "hcmc1022_calendar_overlay_last_year"):
        assert merged.count(f"# TYPE {name} ") == 1
    # Each family's samples follow its own header.
    lines = merged.splitlines()
    assert lines.index("# TYPE hcmc1022_stage_jobs_total counter") + 1 == lines.index(
        'hcmc1022_stage_jobs_total{outcome="done",stage="classify"} 3.0')


def test_nothing_from_the_child_leaves_this_process_s_text_as_it_is() -> None:
    assert samples(merge_exposition(OWN, "")) == samples(OWN)


def test_the_childs_samples_join_a_family_this_process_counts_too() -> None:
    """Intake counts its own chat workers' jobs (Messenger media) in the stage families: the child's classify counts
    must still show, beside them."""
    own = OWN.replace("# TYPE hcmc1022_stage_jobs_total counter\n", "# TYPE hcmc1022_stage_jobs_total counter\n"
                      'hcmc1022_stage_jobs_total{outcome="done",stage="messenger_media:fb"} 2.0\n')
    got = samples(merge_exposition(own, CHILD))
    assert got['hcmc1022_stage_jobs_total{outcome="done",stage="messenger_media:fb"}'] == "2.0"
    assert got['hcmc1022_stage_jobs_total{outcome="done",stage="classify"}'] == "3.0"
