"""What a bundle is, read off its manifest, for people: ``clipcap info BUNDLE``. Torch-free.

The summary is a plain dict (``--json`` prints it); ``format_summary`` lays it out as text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipcap.manifest import MANIFEST_NAME, read_manifest


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def bundle_summary(path: str | Path) -> dict[str, Any]:
    """The manifest's answers to what a user asks of a bundle: the model, its precision, the graphs
    and their sizes, the CLIP, the decoding defaults, how it was verified."""
    path = Path(path)
    m = read_manifest(path)
    files = m.get("files", {})
    clip = m.get("clip") or {}
    verification = m.get("verification") or {}
    graphs = verification.get("graphs") or []
    greedy = verification.get("greedy") or {}
    return {
        "bundle": str(path),
        "created_by": m.get("created_by"),
        "variant": m.get("variant"),
        "source_format": m.get("source_format"),
        "precision": m.get("precision"),
        "model": m.get("model"),
        "clip": {k: clip.get(k) for k in ("backend", "model", "pretrained", "embed_dim", "quick_gelu")},
        "image_size": (m.get("preprocessing") or {}).get("image_size"),
        "generation": m.get("generation"),
        "graphs": {
            name: {
                "file": g.get("file"),
                "bytes": (files.get(g.get("file")) or {}).get("bytes"),
                "fusion": g.get("fusion"),
                "optimization": g.get("optimization"),
            }
            for name, g in (m.get("graphs") or {}).items()
        },
        "bytes": sum(int(f.get("bytes", 0)) for f in files.values() if isinstance(f, dict)),
        "verification": {
            "passed": verification.get("passed"),
            "greedy_identical": greedy.get("exact_sequences"),
            "greedy_sequences": greedy.get("sequences"),
            "token_agreement": greedy.get("token_agreement"),
            "max_abs_diff": max((g.get("max_abs_diff", 0.0) for g in graphs), default=None),
        },
    }


def format_summary(s: dict[str, Any]) -> str:
    model, clip, gen, v = s["model"] or {}, s["clip"], s["generation"] or {}, s["verification"]
    passed = {True: "passed", False: "FAILED", None: "not run"}[v["passed"]]
    rows = [
        ("bundle", f"{s['bundle']} ({_mib(s['bytes'])}, {s['created_by']})"),
        ("model", f"ClipCap {s['variant']} variant, from a {s['source_format']} checkpoint"),
        ("precision", s["precision"]),
        (
            "GPT-2",
            f"{model.get('n_layer')} layers x {model.get('embed_dim')}, {model.get('n_head')} heads, "
            f"vocabulary {model.get('vocab_size')}, {model.get('n_positions')} positions",
        ),
        (
            "mapper",
            f"{model.get('mapper')}, prefix length {model.get('prefix_length')}"
            + (", CLIP embedding L2-normalised" if model.get("normalize_prefix") else ""),
        ),
        (
            "CLIP",
            f"{clip['backend']} {clip['model']} ({clip['pretrained'] or 'no weights named'}), "
            f"{clip['embed_dim']}-d, {s['image_size']} px",
        ),
        (
            "decoding",
            f"{gen.get('strategy')}, {gen.get('max_new_tokens')} new tokens at most, "
            f"stop tokens {gen.get('stop_token_ids')}",
        ),
        (
            "verified",
            f"{passed}: greedy identical {v['greedy_identical']}/{v['greedy_sequences']}, "
            f"token agreement {v['token_agreement']}, largest output difference {v['max_abs_diff']}",
        ),
    ]
    rows += [
        (
            f"graph {name}",
            f"{g['file']}, {_mib(g['bytes'])}" + (f"; fusion: {g['fusion']}" if g["fusion"] else ""),
        )
        for name, g in s["graphs"].items()
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {value}" for k, value in rows)


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"
