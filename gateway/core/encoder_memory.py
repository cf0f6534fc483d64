"""Resident memory of one live compressor (provisional model; refined from benchmarks/encoder_memory.py)."""

from __future__ import annotations

from gateway.core.encoders import CodecSettings

WINDOW_PARAM: dict[str, str] = {"br": "brotli_lgwin", "zstd": "zstd_window_log", "gzip": "gzip_wbits"}


def window_bytes(name: str, settings: CodecSettings) -> int:
    """The usable window in bytes."""
    if name == "br":
        return (1 << settings.brotli_lgwin) - 16
    if name == "zstd":
        return 1 << settings.zstd_window_log
    if name == "gzip":
        return 1 << settings.gzip_wbits
    return 0


def estimate_bytes(name: str, settings: CodecSettings) -> int:
    """Provisional: generous upper bound."""
    if name == "br":
        return 1_048_576 + (1 << settings.brotli_quality) * 65_536 + 3 * (1 << settings.brotli_lgwin)
    if name == "zstd":
        return 1_048_576 + (1 << settings.zstd_level) * 4096 + 3 * (1 << settings.zstd_window_log)
    if name == "gzip":
        return 270_000 + 5 * (1 << settings.gzip_wbits)
    return 0
