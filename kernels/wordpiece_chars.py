"""What BERT's normaliser and pre-tokeniser in HF `tokenizers` do to each character: the table the compiled
WordPiece (kernels/src/wordpiece.hpp) reads for non-ASCII text, built once per process from `unicodedata`.

HF (BertNormalizer with clean_text, handle_chinese_chars, strip_accents and lowercase, then
BertPreTokenizer) applies, in this order:
1. clean_text: U+0000, U+FFFD and the characters of category Cc, Cf, Co or Cs other than \\t \\n \\r are
   dropped; \\t \\n \\r and the White_Space characters (Rust's `char::is_whitespace`) become ' '.
2. handle_chinese_chars: a CJK ideograph (`CJK_RANGES`, from HF's normalizers/bert.rs) gets a space on
   each side.
3. strip_accents: NFD, then the nonspacing marks (Mn) are dropped.
4. lowercase: each character's full lowercase mapping on its own (Rust's `char::to_lowercase`: 'İ' ->
   'i̇', no final-sigma rule).
5. BertPreTokenizer: White_Space ends a word; an ASCII punctuation character or one of category P* is a
   word of its own.
Every step works on one character at a time except NFD's canonical reordering, which only moves characters
of a non-zero combining class; so a character's outcome is one table entry (`char_table`).

Versions: HF reads the categories from the `unicode_categories` crate (Unicode 8.0 tables; a code point
they do not list is plain, not unassigned: U+08D4, a nonspacing mark since Unicode 9.0, stays in its
word), NFD from `unicode-normalization-alignments` (older than Unicode 13.0: U+11938 is not decomposed)
and case from Rust's standard library, each of its own Unicode version; Python's `unicodedata` has another
(14.0 on Python 3.11). A code point is therefore left to HF (kind `HF`) unless the versions cannot
disagree on it: it must be assigned in `unicodedata` and not a surrogate; it, each character of its NFD
and of their lowercase must be in the same group (dropped / nonspacing mark / punctuation / plain) in
Unicode 3.2 (`unicodedata.ucd_3_2_0`; unassigned counts as plain, as in the crate) as now, so every
version in between agrees, or be one of the few that changed group by Unicode 8.0
(`_REGROUPED_BY_UNICODE_8`); one that decomposes must be assigned in Unicode 3.2; and no character kept
after step 3 may have a non-zero combining class (NFD would reorder it). That leaves to HF the unassigned
code points, surrogates and about 2,100 assigned ones (mostly marks, punctuation and format characters
added since Unicode 3.2). tests/unit/test_wordpiece_fast.py checks every other code point against the
installed HF.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ALONE",
    "BLOCK_BITS",
    "CJK_RANGES",
    "DROP",
    "HF",
    "MAPPED",
    "SPACE",
    "WHITESPACE",
    "WORD",
    "CharTable",
    "char_outcome",
    "char_table",
]

#: Entry kinds (the low 3 bits of an entry; kernels/src/wordpiece.hpp reads the same values).
WORD, DROP, SPACE, ALONE, MAPPED, HF = range(6)
#: Code points per block of the two-stage table.
BLOCK_BITS = 8

#: Rust's `char::is_whitespace` (the White_Space property; \\t \\n \\r among them).
WHITESPACE = frozenset(
    map(
        chr,
        [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000],
    )
)
#: The code points HF's `is_chinese_char` puts spaces around (inclusive ranges).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
#: Code points assigned in Unicode 3.2 whose group changed by Unicode 8, where HF's categories stop: HF
#: puts them in their group of now (the others that changed since, e.g. U+166D, U+1734 and U+1885, are left to HF).
_REGROUPED_BY_UNICODE_8 = frozenset(
    [0xA7, 0xAD, 0xB6, 0xF14, 0x17B4, 0x17B5, 0x200B, *range(0x2308, 0x230C), *range(0x23B4, 0x23B7)]
)
_ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_OTHER = frozenset({"Cc", "Cf", "Co", "Cs"})
_CATEGORIES = "Cc Cf Cn Co Cs Ll Lm Lo Lt Lu Mc Me Mn Nd Nl No Pc Pd Pe Pf Pi Po Ps Sc Sk Sm So Zl Zp Zs".split()
#: The part of a category HF's steps read: dropped (other), nonspacing mark, punctuation or plain; an
#: unassigned code point (Cn) is plain, as HF's categories count one.
_GROUP = {
    cat: "other" if cat in _OTHER else "mark" if cat == "Mn" else "punct" if cat[0] == "P" else "plain"
    for cat in _CATEGORIES
}


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def _stable(c: str) -> bool:
    """Whether HF's categories put c in the same group as `unicodedata`: they do when Unicode 3.2 does
    (then so does every version between) and for `_REGROUPED_BY_UNICODE_8`."""
    return _GROUP[unicodedata.category(c)] == _GROUP[unicodedata.ucd_3_2_0.category(c)] or (
        ord(c) in _REGROUPED_BY_UNICODE_8
    )


def char_outcome(c: str) -> list[tuple[str, int]] | None:
    """What HF makes of the character c between other characters: (character, kind) for each character it
    becomes, kind WORD (part of a word), SPACE (ends a word) or ALONE (a word of its own), [] when it is
    dropped; None when it is left to HF (the module docstring says when)."""
    cp = ord(c)
    category = unicodedata.category(c)
    if category in ("Cn", "Cs") or not _stable(c):
        return None
    if c in "\t\n\r":
        return [(" ", SPACE)]
    if cp in (0, 0xFFFD) or category in _OTHER:  # before White_Space: U+000B, U+000C, U+0085 are dropped
        return []
    if c in WHITESPACE:
        return [(" ", SPACE)]
    nfd = unicodedata.normalize("NFD", c)
    if nfd != c and unicodedata.ucd_3_2_0.category(c) == "Cn":
        return None
    out: list[tuple[str, int]] = []
    for d in nfd:
        if not _stable(d):
            return None
        if unicodedata.category(d) == "Mn":
            continue
        if unicodedata.combining(d):
            return None
        for low in d.lower():
            if not _stable(low):
                return None
            if low in WHITESPACE:
                out.append((" ", SPACE))
            elif low in _ASCII_PUNCT or unicodedata.category(low)[0] == "P":
                out.append((low, ALONE))
            else:
                out.append((low, WORD))
    if _is_cjk(cp):  # spaces around it: its one character is a word of its own
        return [(out[0][0], ALONE)] if len(out) == 1 and out[0][1] == WORD else None
    return out


class CharTable(NamedTuple):
    """The two-stage table the compiled WordPiece reads: `blocks[cp >> BLOCK_BITS]` is the block of cp,
    `entries[(block << BLOCK_BITS) | (cp & low bits)]` its entry: kind in the low 3 bits; for MAPPED the
    number of characters it becomes in bits 3-7 and where they start in `pool` in bits 8-31. A pool item is
    a code point | (kind << 21), kind WORD, SPACE or ALONE. `widest`: the most characters one becomes."""

    blocks: NDArray[np.uint32]
    entries: NDArray[np.uint32]
    pool: NDArray[np.uint32]
    widest: int


def _entry(cp: int, outcome: list[tuple[str, int]], pool: list[int]) -> int:
    """The table entry of an outcome (appending to pool what a MAPPED one becomes)."""
    if not outcome:
        return DROP
    if outcome == [(" ", SPACE)]:
        return SPACE
    if len(outcome) == 1 and outcome[0][0] == chr(cp):
        return outcome[0][1]
    entry = MAPPED | (len(outcome) << 3) | (len(pool) << 8)
    pool += [ord(ch) | (kind << 21) for ch, kind in outcome]
    return entry


@functools.cache
def char_table() -> CharTable:
    """The table of every code point (about 0.5 s, once per process)."""
    flat = np.full(0x110000, HF, dtype=np.uint32)
    pool: list[int] = []
    old_category = unicodedata.ucd_3_2_0.category
    for cp, category in enumerate(map(unicodedata.category, map(chr, range(0x110000)))):
        if category == "Cn" or category == "Cs":
            continue
        c = chr(cp)
        old = old_category(c)
        if category == "Co":  # private use, dropped
            if _GROUP[old] == "other":
                flat[cp] = DROP
            continue
        if (
            _GROUP[category] == "plain"
            and _GROUP[old] == "plain"
            and c not in WHITESPACE
            and c not in _ASCII_PUNCT
            and cp != 0xFFFD
            and unicodedata.is_normalized("NFD", c)
            and not unicodedata.combining(c)
            and c.lower() == c
        ):  # the common case: a character of a word as it is (an ideograph's entry is set below)
            flat[cp] = WORD
            continue
        outcome = char_outcome(c)
        if outcome is not None:
            flat[cp] = _entry(cp, outcome, pool)
    for lo, hi in CJK_RANGES:  # an ideograph as it is: alone
        span = flat[lo : hi + 1]
        span[span == WORD] = ALONE
    blocks: dict[bytes, int] = {}
    index = np.empty(flat.shape[0] >> BLOCK_BITS, dtype=np.uint32)
    for b, block in enumerate(flat.reshape(-1, 1 << BLOCK_BITS)):
        index[b] = blocks.setdefault(block.tobytes(), len(blocks))
    mapped = (flat & 7) == MAPPED
    return CharTable(
        blocks=index,
        entries=np.frombuffer(b"".join(blocks), dtype=np.uint32).copy(),
        pool=np.asarray(pool, dtype=np.uint32),
        widest=max(1, int(((flat[mapped] >> 3) & 31).max(initial=1))),
    )
