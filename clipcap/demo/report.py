"""`clipcap demo`'s report: the summary table, the contact sheet of held-out images with each
variant's caption, and the machine it ran on. Torch-free to import (Pillow, torch and ONNX Runtime
are imported when used).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from clipcap import machine


def summary_table(report: dict[str, Any]) -> str:
    columns = [
        ("variant", "variant", "{}"),
        ("exact_match", "exact", "{:.3f}"),
        ("bleu4", "BLEU-4", "{:.3f}"),
        ("cider", "CIDEr", "{:.3f}"),
        ("n_heldout", "held-out", "{}"),
        ("ort_ms_p50", "ORT ms p50", "{:.1f}"),
        ("torch_ms_p50", "torch ms p50", "{:.1f}"),
        ("bundle_mb", "bundle MiB", "{:.1f}"),
        ("identical_to_pytorch", "= torch", "{:.3f}"),
    ]
    rows = [[title for _, title, _ in columns]]
    for v in report["variants"]:
        rows.append(["-" if v.get(k) is None else fmt.format(v[k]) for k, _, fmt in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    mode = report["mode"]
    lines.append(
        f"({mode} demo, {report['seconds']:.0f} s on {report['machine']['cores']} cores; "
        "latency = one image, load to caption, median)"
    )
    return "\n".join(lines)


def _contact_sheet(path: Path, test: list[dict[str, Any]], rows: list[dict[str, Any]], root: Path) -> Path:
    """Held-out images with each variant's caption: green when right, red (and a right answer in
    grey) when wrong; a picture some variant got wrong has a red frame."""
    from PIL import Image, ImageDraw

    from clipcap.eval.metrics import normalize_caption

    font = _font(12)
    thumb, cols, cell_w, line_h, pad = 128, 6, 300, 15, 6
    blocks = []  # per image: [(text, colour)], wrapped to the cell
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for i, record in enumerate(test):
        right = {normalize_caption(c) for c in record["captions"]}
        lines, wrong = [], False
        for row in rows:
            text = row["_predictions"][i]
            ok = normalize_caption(text) in right
            wrong |= not ok
            colour = (0, 130, 0) if ok else (200, 0, 0)
            lines += [
                (t, colour) for t in _wrap(f"{row['variant']}: {text}", font, cell_w - 2 * pad, measure)
            ]
        if wrong:
            lines += [
                (t, (110, 110, 110))
                for t in _wrap(f"right: {record['captions'][0]}", font, cell_w - 2 * pad, measure)
            ]
        blocks.append((lines, wrong))
    cell_h = thumb + 8 + line_h * max((len(b[0]) for b in blocks), default=1) + 12
    top = 30
    sheet = Image.new("RGB", (cols * cell_w, top + -(-len(test) // cols) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (pad, 8),
        "clipcap demo, held-out images: green = an exact caption, red = wrong (a right answer in grey)",
        fill="black",
        font=font,
    )
    for i, (record, (lines, wrong)) in enumerate(zip(test, blocks, strict=True)):
        x, y = (i % cols) * cell_w, top + (i // cols) * cell_h
        image = Image.open(root / record["image"]).convert("RGB").resize((thumb, thumb), Image.NEAREST)
        left = x + (cell_w - thumb) // 2
        sheet.paste(image, (left, y))
        if wrong:
            draw.rectangle((left - 3, y - 3, left + thumb + 2, y + thumb + 2), outline=(200, 0, 0), width=3)
        for k, (text, colour) in enumerate(lines):
            draw.text((x + pad, y + thumb + 8 + k * line_h), text, fill=colour, font=font)
    sheet.save(path)
    return path


def _wrap(text: str, font, width: int, draw) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            candidate = "  " + word
        line = candidate
    return [*lines, line]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {
        "cpu": machine.cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
    }
