"""How much memory one live compressor holds, so a global budget can account every connection's encoder.

Sans-IO on purpose: the memory budget calls ``estimate_bytes`` once per new connection, and tests call it over the
whole settings grid, neither with an event loop in sight.

The numbers come from ``python -m benchmarks.encoder_memory`` (``benchmarks/results/encoder_memory.json``): per
setting, a fresh process creates N encoders, feeds each at least 2.25 windows of the demo's ~15 KB todo renders
with one ``encode_flush`` per event, and divides the growth of its RSS, and of what glibc has handed out, by N.
Linux x86-64, brotli 1.2.1, zstandard 0.25.0 (libzstd 1.5.7), zlib 1.2.13; KiB per encoder as RSS/allocated, and
what ``estimate_bytes`` charges::

    brotli lgwin:            10            16            18            20            22   model@16/22
    q0                    21/23       140/143       141/143       156/175       165/177     504/796
    q2                  354/525       449/621     837/1,009   2,373/2,546   8,517/8,691     724/9,996
    q4                  745/929       745/929   1,133/1,317   2,669/2,854   8,813/8,999   1,080/10,352
    q5                  743/925       740/925   1,913/2,117   3,469/3,654   9,612/9,799   1,080/11,284
    q6                  743/925       741/925   3,053/3,401   4,708/4,938 10,896/11,083   1,080/12,764
    q9              1,491/1,697   1,489/1,697  5,524/33,829  9,443/35,366 20,061/41,511   1,956/47,744
    q11                 952/933   1,463/1,441   3,558/3,553 11,224/11,238 41,950/41,960   2,348/48,716
    zstd wlog:               10            14            17            20            23   model@17/23
    level 1             103/225       150/326     262/1,086   1,158/1,982   8,322/9,150   1,288/10,564
    level 3             808/930     858/1,034     969/1,790   1,866/2,686   9,029/9,854   2,100/11,372
    level 6         3,110/3,234   3,158/3,338   2,761/3,582   3,658/4,478 10,820/11,646   4,748/14,024
    level 12      49,185/49,314 49,233/49,418 41,157/41,982 42,053/42,878 49,217/50,046  57,740/67,016
    gzip wbits 9: 99/136, 12: 97/150, 15: 209/262 (levels 1, 6 and 9 alike); model 160, 176, 304

Why the terms (checked against the library sources and the measurements):

- **the window is a ring buffer**: Brotli's is *twice* the window (``1 << (1 + max(lgwin, lgblock))``, at least
  128 KiB from quality 4 up); zstd's input buffer is the window plus one block; zlib's window and its ``prev``
  chain take 2 bytes each per window byte (``4 << wbits``). Brotli q0-1 keep no ring buffer: they compress each
  flush on its own (which is also why they gain nothing from a connection-long window);
- **hash tables follow the quality or level, not the window** (mostly): Brotli q2-4 use a fixed 256-512 KiB
  table; q5-9 switch above lgwin 16 to a bucket table of ``4 << (14 or 15 + quality - 1)`` bytes (1 MiB at q5,
  32 MiB at q9), which the demo's repetitive stream only sparsely touches (q9: 5-20 MiB resident of 33-41 MiB)
  but varied text fills (35 of 35 MiB at q9/lgwin 20 on random words); q10-11 keep a binary tree of 8 bytes per
  window byte. zstd's tables come from its level table (``4 << hashLog`` + ``4 << chainLog``) whatever the
  window: a streaming compressor does not know its input size, so libzstd never shrinks them (level 12: 48 MiB
  even at window_log 10), and levels 16-22 add long-distance matching at window_log 27. zlib's are fixed by
  memLevel 8 (128 KiB), so the gzip level changes nothing;
- **per-event buffers** (Brotli's command array and output storage, zstd's block buffers) grow with the event up
  to a block, and q0-1's table grows with the event up to the window.

The model charges the larger of two measurements, plus ``HEADROOM`` (15 %) and rounding up to whole pages:
the *allocation* on the demo's stream, since that is the ceiling the window and tables reach as a long-lived
connection's data varies; and the *RSS* with renders as large as the window is sized for (~0.8 window, the
``large_renders`` of the benchmark), since per-event buffers are allocated for the largest event's worst case
(Brotli reserves twice the input for output) but written only as far as commands and output go. So the defaults
are charged about 1.45x (brotli q4 lgwin 16, gzip) to 2.2x (zstd 3/17) of what a demo connection has resident,
and 1.16x what it has allocated.

Two approximations keep the model monotonic, which the budget's downgrade path relies on (a smaller window or a
lower quality is never more expensive): zstd's smaller row-based match finder (levels 5-12 above window_log 14)
is charged like the chain tables it replaces, and each quality / level is charged at least what every lower one
is (Brotli q10-11 actually need less than q9 at lgwin 17-21, zstd level 13 less than level 12).
"""

from __future__ import annotations

import math
from functools import lru_cache

from gateway.core.encoders import CodecSettings

__all__ = ["HEADROOM", "WINDOW_PARAM", "estimate_bytes", "window_bytes"]

#: The ``CodecSettings`` field holding each codec's window (a log2 of bytes), for code that resizes windows.
WINDOW_PARAM: dict[str, str] = {"br": "brotli_lgwin", "zstd": "zstd_window_log", "gzip": "gzip_wbits"}

#: Margin over the measured ceiling: allocator overhead, fragmentation and other library builds.
HEADROOM = 1.15
_PAGE = 4096
_KIB = 1024

# Brotli, per quality: (fixed KiB, bytes per window byte beyond the ring buffer, extra KiB once lgwin > 16).
# Fixed: hash table and per-metablock buffers; q9 keeps a larger chain hasher at small windows too. Extra: the
# bucket table that q5-9 switch to above lgwin 16. Per window byte: q10-11's binary tree (two uint32 per
# position); for q0-1, which keep no ring buffer, their per-flush table, sized to the event (which the window
# bounds) up to 2**17 positions.
_BROTLI: tuple[tuple[int, int, int], ...] = (
    (180, 4, 0),  # q0
    (180, 4, 0),  # q1
    (500, 0, 0),  # q2
    (500, 0, 0),  # q3
    (808, 0, 0),  # q4
    (808, 0, 812),  # q5
    (808, 0, 2_096),  # q6
    (808, 0, 7_752),  # q7
    (808, 0, 15_944),  # q8
    (1_570, 0, 31_752),  # q9
    (1_400, 8, 0),  # q10
    (1_400, 8, 0),  # q11
)

# zstd's compression-level table for an unknown input size (libzstd 1.5.x): (hashLog, chainLog, strategy), with
# strategy 1 fast, 2 dfast, 3 greedy, 4 lazy, 5 lazy2, 6 btlazy2, 7 btopt, 8 btultra, 9 btultra2.
_ZSTD_LEVELS: dict[int, tuple[int, int, int]] = {
    1: (14, 13, 1),
    2: (16, 15, 1),
    3: (17, 16, 2),
    4: (18, 18, 2),
    5: (19, 18, 3),
    6: (19, 18, 4),
    7: (20, 19, 4),
    8: (20, 19, 5),
    9: (21, 20, 5),
    10: (22, 21, 5),
    11: (22, 21, 5),
    12: (23, 22, 5),
    13: (22, 22, 6),
    14: (23, 22, 6),
    15: (23, 23, 6),
    16: (22, 22, 7),
    17: (22, 23, 7),
    18: (22, 23, 8),
    19: (22, 24, 9),
    20: (23, 25, 9),
    21: (24, 26, 9),
    22: (25, 27, 9),
}
_ZSTD_FIXED = 160 * _KIB  # context, entropy tables, the binding's output buffer
_ZSTD_BLOCK = 1 << 17  # the largest block: bounds the sequence store and the literal buffers
_ZSTD_OPT = 160 * _KIB  # the optimal parser's price tables (btopt and up)

_GZIP_FIXED = 134 * _KIB  # deflate state + head hash (2 << 15) + pending buffer (4 << 14), memLevel 8


def window_bytes(name: str, settings: CodecSettings) -> int:
    """How far back the codec can reference: the largest render that still compresses to its diff.

    Brotli reserves 16 bytes of its window; identity has none.
    """
    if name == "br":
        return (1 << settings.brotli_lgwin) - 16
    if name == "zstd":
        return 1 << settings.zstd_window_log
    if name == "gzip":
        return 1 << settings.gzip_wbits
    if name == "identity":
        return 0
    raise ValueError(f"unknown encoding {name!r}")


def estimate_bytes(name: str, settings: CodecSettings) -> int:
    """Conservative resident bytes of one live encoder of ``name`` with ``settings`` (0 for identity).

    Only the fields of ``settings`` that belong to ``name`` count. Monotonic: a larger window or a higher quality
    or level never estimates less.
    """
    if name == "br":
        raw = _brotli(settings.brotli_quality, settings.brotli_lgwin)
    elif name == "zstd":
        raw = _zstd(settings.zstd_level, settings.zstd_window_log)
    elif name == "gzip":
        raw = _GZIP_FIXED + (4 << settings.gzip_wbits)
    elif name == "identity":
        return 0
    else:
        raise ValueError(f"unknown encoding {name!r}")
    return math.ceil(raw * HEADROOM / _PAGE) * _PAGE


def _brotli_one(quality: int, lgwin: int) -> int:
    fixed, per_window_byte, extra = _BROTLI[quality]
    if quality < 2:  # no ring buffer; the table follows the event, which the window bounds
        return fixed * _KIB + (per_window_byte << min(lgwin, 17))
    ring = 2 << max(lgwin, 16)
    return fixed * _KIB + ring + (per_window_byte << lgwin) + (extra * _KIB if lgwin > 16 else 0)


@lru_cache(maxsize=512)
def _brotli(quality: int, lgwin: int) -> int:
    return max(_brotli_one(q, lgwin) for q in range(quality + 1))


def _zstd_one(level: int, window_log: int) -> int:
    hash_log, chain_log, strategy = _ZSTD_LEVELS[level]
    tables = (4 << hash_log) + (4 << chain_log if strategy > 1 else 0) + (_ZSTD_OPT if strategy >= 7 else 0)
    block_buffers = (11 if strategy >= 8 else 6) * min(1 << window_log, _ZSTD_BLOCK)
    # long-distance matching, enabled by libzstd for btopt and up at window_log 27: 8-byte entries,
    # one per 2**(7 - strategy // 3) window bytes
    ldm = 8 << (window_log - 7 + strategy // 3) if strategy >= 7 and window_log >= 27 else 0
    return _ZSTD_FIXED + tables + (1 << window_log) + block_buffers + ldm


@lru_cache(maxsize=512)
def _zstd(level: int, window_log: int) -> int:
    return max(_zstd_one(lv, window_log) for lv in range(1, level + 1))
