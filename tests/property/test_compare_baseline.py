"""Property: a `pvhboot compare --baseline` cell record is either refused by engine.is_cell_record
(one error line in the CLI) or goes through the diff and both reports without an exception, whatever
JSON a hand-edited or hostile file puts in its fields."""
import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from pvhboot.compare.diff import compare_records
from pvhboot.compare.engine import RECORD_TEXT, is_cell_record
from pvhboot.compare.report import print_flaky, print_report
from pvhboot.compare.rules import LINUX_RULES

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2, 1 << 40) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3),
                           max_leaves=6)
# A well-formed record as compare writes it; then, half the time, one field (any, or a new one) set to
# arbitrary JSON, so that both sides of the check are exercised.
good_optional = {k: st.one_of(st.none(), st.text(max_size=20)) for k in RECORD_TEXT if k not in ("path", "status")}
good_optional.update({
    "fingerprint": st.dictionaries(st.sampled_from(["a", "b", "exit"]), st.text(max_size=6), max_size=3),
    "exit": st.one_of(st.none(), st.fixed_dictionaries({"reason": st.sampled_from(["poweroff", "crash"]),
                                                        "code": st.integers(0, 1)})),
    "failures": st.lists(st.text(max_size=10), max_size=3),
    "attempts": st.integers(1, 4),
    "wall_s": st.floats(0, 100),
})
good = st.fixed_dictionaries({"path": st.sampled_from(["pvh", "linux64"]), "cpus": st.just(2),
                              "memory": st.just(256 << 20),
                              "status": st.sampled_from(["ok", "crash", "timeout", "error"])},
                             optional=good_optional)
FIELDS = sorted({"path", "cpus", "memory", "status", *good_optional})
records = good.flatmap(lambda r: st.one_of(
    st.just(r), st.tuples(st.sampled_from(FIELDS), json_values).map(lambda kv: {**r, kv[0]: kv[1]})))


@settings(max_examples=300, deadline=None)
@given(records)
def test_a_baseline_record_is_refused_or_reported(rec):
    if not is_cell_record(rec):
        return
    rec.setdefault("fingerprint", {})  # as commands/compare._load_baseline does
    ours = {"path": "pvh", "cpus": 2, "memory": 256 << 20, "status": "ok", "fingerprint": {"a": "1"}}
    out = io.StringIO()
    console = Console(file=out, width=120, color_system=None)
    print_report(compare_records([ours], LINUX_RULES, baseline=[rec]), console)
    print_flaky([ours, rec], console)
