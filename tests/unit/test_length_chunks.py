"""`length_chunks`: how the scorer groups a micro-batch for the encoder (sorted by length, bounded size,
bounded padding), so a short prompt is never padded to a long prompt's length."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmroute.service.bundle_scorer import MAX_PADDING, length_chunks


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 256), min_size=0, max_size=80),
    max_size=st.integers(1, 16),
)
def test_chunks_cover_every_row_once_within_size_and_padding(lengths: list[int], max_size: int) -> None:
    chunks = length_chunks(lengths, max_size)
    rows = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_size
        sizes = np.asarray(lengths)[chunk]
        if len(chunk) > 1:
            assert sizes.max() * len(chunk) <= (1 + MAX_PADDING) * sizes.sum() + 1e-9


def test_short_prompts_are_not_padded_to_a_long_one() -> None:
    lengths = [9, 240, 10, 11, 12, 8]
    chunks = [sorted(c.tolist()) for c in length_chunks(lengths, 8)]
    assert chunks == [[0, 2, 3, 4, 5], [1]]


def test_equal_lengths_fill_chunks_up_to_the_size() -> None:
    chunks = length_chunks([32] * 10, 4)
    assert [len(c) for c in chunks] == [4, 4, 2]
