"""Class-name cleaning and validation, per dataset.

The raw names in the xlsa17 files carry dataset-specific encodings: AWA2 writes
``grizzly+bear``, CUB ``002.Laysan_Albatross``, SUN ``access_road``. DFZSL's feature
extraction cleans them before filling the text template (method.md section 2.2); the same rules
are applied here, followed by a generic whitespace normalisation. Empty or duplicate names are
errors, because they make two classes indistinguishable to a text encoder.

Example:
    >>> clean_classnames(["002.Laysan_Albatross", "003.Sooty_Albatross"], "CUB")
    ['Laysan Albatross', 'Sooty Albatross']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = [
    "CLEANING_STYLES", "clean_classname", "clean_classnames", "check_classnames", "name_key",
]

_CUB_PREFIX = re.compile(r"^\s*\d+\.")
_SPACES = re.compile(r"\s+")

#: dataset name (upper case) -> cleaning style
CLEANING_STYLES: dict[str, str] = {
    "AWA1": "awa",
    "AWA2": "awa",
    "CUB": "cub",
    "SUN": "sun",
    "APY": "generic",
    "FLO": "generic",
}


def _style_for(dataset: str | None) -> str:
    if dataset is None:
        return "generic"
    if not isinstance(dataset, str):
        raise TypeError(f"`dataset` must be a string or None, got {type(dataset).__name__}")
    key = dataset.strip().upper()
    if key in {"AWA", "CUB", "SUN", "GENERIC", "NONE"}:
        return key.lower()
    return CLEANING_STYLES.get(key, "generic")


def clean_classname(name: str, dataset: str | None = None) -> str:
    """Clean one raw class name.

    Rules: ``awa`` (AWA1/AWA2): ``+`` -> space; ``cub``: drop the ``NNN.`` prefix, ``_`` ->
    space; ``sun``: ``_`` -> space; ``generic`` (everything else, including the base-to-new
    datasets): ``_`` -> space; ``none``: only the whitespace normalisation. Every style then
    strips and collapses runs of whitespace. Case is kept.

    Args:
        name: the raw name.
        dataset: a dataset name (``"AWA2"``, ``"CUB"``, ...; case-insensitive), a style name, or
            None for ``generic``.

    Returns:
        The cleaned name (may be empty: use :func:`check_classnames` to reject that).
    """
    if not isinstance(name, str):
        raise TypeError(f"class name must be a string, got {type(name).__name__}: {name!r}")
    style = _style_for(dataset)
    if style == "awa":
        name = name.replace("+", " ")
    elif style == "cub":
        name = _CUB_PREFIX.sub("", name).replace("_", " ")
    elif style in ("sun", "generic"):
        name = name.replace("_", " ")
    return _SPACES.sub(" ", name).strip()


def name_key(name: str) -> str:
    """The identity of a class name: surrounding whitespace stripped, inner runs collapsed.

    Case is kept ("Cardigan" and "cardigan" are two ImageNet classes)."""
    return _SPACES.sub(" ", name).strip()


def check_classnames(names: Sequence[str], argument: str = "class_names") -> list[str]:
    """Raise if any name is empty or duplicated (whitespace-insensitive, case-sensitive).

    Names that differ only in case are different classes: CLIP's ImageNet list has "Cardigan"
    (the corgi) and "cardigan" (the sweater).

    Args:
        names: class names, one per class index.
        argument: the argument name used in error messages.

    Returns:
        The names, as a list.

    Raises:
        TypeError: ``names`` is a plain string or holds a non-string.
        ValueError: no names, an empty name (index given), or duplicates (indices given).
    """
    if isinstance(names, (str, bytes)):
        raise TypeError(f"`{argument}` must be a sequence of names, not a single string")
    try:
        out = list(names)
    except TypeError:
        raise TypeError(
            f"`{argument}` must be a sequence of names, got {type(names).__name__}"
        ) from None
    if not out:
        raise ValueError(f"`{argument}` is empty")
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        if not isinstance(n, str):
            raise TypeError(f"`{argument}`[{i}] must be a string, got {type(n).__name__}")
        key = name_key(n)
        if not key:
            raise ValueError(f"`{argument}`[{i}] is empty (after cleaning): {n!r}")
        if key in seen:
            raise ValueError(
                f"`{argument}` has duplicate names: [{seen[key]}] {out[seen[key]]!r} and "
                f"[{i}] {n!r}"
            )
        seen[key] = i
    return out


def clean_classnames(
    names: Iterable[str], dataset: str | None = None, argument: str = "class_names"
) -> list[str]:
    """Clean every name with :func:`clean_classname`, then :func:`check_classnames`.

    Raises:
        ValueError: a cleaned name is empty or two cleaned names coincide.
    """
    if isinstance(names, str):
        raise TypeError(f"`{argument}` must be a sequence of names, not a single string")
    cleaned = [clean_classname(n, dataset) for n in names]
    return check_classnames(cleaned, argument)
