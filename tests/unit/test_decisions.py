"""Decision ids: layout, time order, uniqueness, and the refusal of strings that are not ids."""

from __future__ import annotations

import pytest

from lmroute.service.decisions import decision_id_time_ms, new_decision_id


def test_an_id_is_32_hex_characters_led_by_its_time_in_ms() -> None:
    did = new_decision_id(now_ms=0x0123456789AB)
    assert len(did) == 32 and did[:12] == "0123456789ab" and set(did) <= set("0123456789abcdef")
    assert decision_id_time_ms(did) == 0x0123456789AB


def test_ids_sort_by_time_and_do_not_repeat() -> None:
    ids = [new_decision_id(now_ms=1_700_000_000_000 + i // 100) for i in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert [decision_id_time_ms(d) for d in sorted(ids)] == sorted(decision_id_time_ms(d) for d in ids)
    assert sorted(ids)[0][:12] < sorted(ids)[-1][:12]


def test_the_clock_is_read_when_no_time_is_given() -> None:
    import time

    before = int(time.time() * 1000)
    did = new_decision_id()
    assert before <= decision_id_time_ms(did) <= int(time.time() * 1000)


@pytest.mark.parametrize("bad", ["", "xyz", "0" * 31, "0" * 33, "G" * 32, "0123456789ABCDEF0123456789ABCDEF"])
def test_strings_that_are_not_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a decision id"):
        decision_id_time_ms(bad)


def test_a_time_beyond_48_bits_is_refused() -> None:
    with pytest.raises(ValueError, match=r"now_ms: must fit in 48 bits \(got -1\)"):
        new_decision_id(now_ms=-1)
