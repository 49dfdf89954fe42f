"""Deterministic seeds for the k-means fit: one independent random stream per (seed, level, rank, purpose)."""

from __future__ import annotations


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix-style), so (seed, level, rank, purpose) streams differ."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF
