"""The CI slice of the mutation-fuzzing campaign (tests/fuzz/campaign.py), and checks that the
campaign really reports what it is meant to find (a crash, a hang, a memory blow-up).

The full campaign (100,000 cases) is run by hand: ``python3 tests/fuzz/campaign.py --count 100000
--workers 2``; its results are in bench/fuzz.md.
"""
import json

import imagekit
import pytest
from fuzz import campaign

SLICE = 600  # ~15-25 s on the shared 2-core machine, worker start-up included


def test_campaign_slice_finds_no_crash_hang_or_blowup():
    s = campaign.run_campaign(SLICE, campaign_seed=20261201, workers=1, cli_every=300)
    found = s.crashes + s.hangs + s.blowups
    assert not found, "\n".join(json.dumps(r) for r in found)
    assert s.cases == SLICE and s.cli_cases == 2
    # The mutations leave some images good enough for every command, and break the rest.
    assert 0 < s.commands_ok < s.commands


def test_an_escaping_exception_is_a_crash(tmp_path, monkeypatch):
    import pvhboot.cli

    def broken(argv):
        raise KeyError("boom")

    monkeypatch.setattr(pvhboot.cli, "main", broken)
    problem, ok = campaign.run_in_process(str(tmp_path / "k"), str(tmp_path / "o"), [])
    assert problem.startswith("inspect: KeyError: 'boom' at ") and ok == 0


@pytest.mark.parametrize("rc,stderr,bad", [
    (0, "", False),
    (2, "pvhboot: error: k: not an ELF\n", False),
    (2, "pvhboot: error: one\npvhboot: error: two\n", True),
    (2, "usage: ...\n", True),
    (1, "Traceback (most recent call last):\n", True),
    (139, "", True),
])
def test_exit_status_and_stderr_rules(rc, stderr, bad):
    assert (campaign._check_exit(["inspect"], rc, stderr) is not None) == bad


def test_a_case_over_its_time_is_a_hang():
    """Case 1 never answers: it is a hang, its worker is replaced, and case 2 still runs."""
    s = campaign.run_campaign(3, workers=1, timeout=1.0, wall=1.0, small_only=True, stall_case=1)
    assert [h["i"] for h in s.hangs] == [1] and not s.crashes and s.cases == 3


def test_a_spinning_case_is_a_hang_by_its_cpu_time():
    """A case that computes for ever is caught by its CPU time long before the wall budget."""
    s = campaign.run_campaign(2, workers=1, timeout=1.0, wall=300.0, small_only=True, spin_case=0)
    assert [h["i"] for h in s.hangs] == [0] and "s of CPU" in s.hangs[0]["problem"]


def test_a_case_over_the_rss_limit_is_a_blowup():
    s = campaign.run_campaign(2, workers=1, rss_limit=1 << 20, small_only=True)
    assert [b["i"] for b in s.blowups] == [0, 1] and "peak RSS" in s.blowups[0]["problem"]


def test_replay_gives_the_same_image(tmp_path):
    pool = campaign.seeds(small_only=True)
    a = campaign.make_case(1234, 1, pool)
    b = campaign.make_case(1234, 1, pool)
    assert a[1] == b[1] and a[2] == b[2] and a[0].name == b[0].name
    assert campaign.main(["--replay", "1234", "--small-only", "-o", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img").read_bytes() == a[1]


def test_bomb_seeds_expand_past_their_claim():
    """The bomb seeds really are bombs: each decodes past the 16 MiB its trailer claims."""
    from pvhboot.errors import ImageError
    from pvhboot.image.bzimage import parse_bzimage

    for seed in campaign.seeds(small_only=True):
        if seed.name.startswith("bomb-"):
            codec = seed.name.removeprefix("bomb-")
            with pytest.raises(ImageError, match=f"{codec} payload.* (more than|does not fit)"):
                parse_bzimage(seed.data)
    assert set(imagekit.CODECS) == {s.name.removeprefix("bomb-") for s in campaign.seeds(True)
                                    if s.name.startswith("bomb-")}
