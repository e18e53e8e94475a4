"""A request's decoding options, from query parameters, form fields or JSON keys, read in one place.

Everything arrives as text (or JSON values); each option is converted here and the whole set is
validated by ``Captioner.options`` (the bundle's defaults, then the request's), so a bad value is
a 422 that names the option, and an unknown name is refused rather than ignored.
"""

from __future__ import annotations

from typing import Any

from clipcap.runtime import Captioner

from clipcap.errors import OptionsError
from clipcap.options import DecodingOptions

STRATEGY_NAMES = {
    "greedy": "greedy",
    "beam": "beam",
    "top_k": "top_k",
    "top-k": "top_k",
    "topk": "top_k",
    "top_p": "top_p",
    "top-p": "top_p",
    "topp": "top_p",
}
DECODING = {
    "strategy": str,
    "top_k": int,
    "top_p": float,
    "temperature": float,
    "beam_size": int,
    "max_new_tokens": int,
    "min_new_tokens": int,
    "length_penalty": float,
    "seed": int,
}
REQUEST = ("model", "stream", "stop", "image", "embeddings")  # read elsewhere, not decoding options
KNOWN = (*DECODING, *REQUEST)


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise OptionsError(f"{name} must be true or false, got {value!r}")


def decoding_options(captioner: Captioner, fields: dict[str, list[Any]]) -> DecodingOptions:
    """``fields``: every option name with its values (a name may repeat: ``stop``)."""
    unknown = sorted(set(fields) - set(KNOWN))
    if unknown:
        raise OptionsError(
            f"unknown option {', '.join(map(repr, unknown))}; the options are {', '.join(KNOWN)}"
        )
    overrides: dict[str, Any] = {}
    for name, kind in DECODING.items():
        if name not in fields:
            continue
        values = fields[name]
        if len(values) > 1:
            raise OptionsError(f"{name} was given {len(values)} times; give it once")
        overrides[name] = _convert(name, kind, values[0])
    if "strategy" in overrides:
        key = str(overrides["strategy"]).strip().lower()
        if key not in STRATEGY_NAMES:
            raise OptionsError(
                f"strategy must be one of greedy, top-k, top-p, beam, got {overrides['strategy']!r}"
            )
        overrides["strategy"] = STRATEGY_NAMES[key]
    stops = [str(s) for s in fields.get("stop", [])]
    return captioner.options(stop_strings=stops, **overrides)


def _convert(name: str, kind: type, value: Any) -> Any:
    if kind is str:
        return str(value)
    if isinstance(value, bool) or value is None:
        raise OptionsError(f"{name} must be a number, got {value!r}")
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        return float(value)
    except (TypeError, ValueError):
        raise OptionsError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None
