"""Shared property helpers of the kernel-layer fuzz tests."""

from __future__ import annotations

import torch

#: Exceptions a public entry point may raise on bad input (anything else is an internal error).
CLEAN = (ValueError, TypeError)


def outcome(fn, *names):
    """Run `fn()`: its result, or None after a ValueError/TypeError whose message names one of
    `names` (the offending argument). Any other exception (an internal error) propagates."""
    try:
        return fn()
    except CLEAN as exc:
        msg = str(exc)
        assert any(n in msg for n in names), f"error does not name any of {names}: {msg!r}"
        return None


def unit_tolerance(dtype: torch.dtype) -> float:
    """How far |x| of a unit sample may be from 1 (derived from the dtype's epsilon)."""
    return 64 * torch.finfo(dtype).eps
