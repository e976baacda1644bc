"""Server-rendered SVG charts: no JavaScript, no CDN, readable by screen readers.

Each chart is an inline ``<svg role="img">`` with a ``<title>`` and ``<desc>``; every bar
or point has its own ``<title>`` (a tooltip on hover). Colours come from CSS classes
(``static/style.css``), so the charts follow the page's theme. Pages also print the
numbers in a table next to each chart.
"""
from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

from markupsafe import Markup, escape

W, H = 560, 230
PAD_L, PAD_R, PAD_T, PAD_B = 44, 12, 14, 30
_ids = itertools.count(1)


def _nice_max(value: int) -> int:
    """The smallest 4 x a round step that holds ``value`` (the axis has four intervals)."""
    for step in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 250, 500):
        if value <= step * 4:
            return step * 4
    return -(-value // 1000) * 1000


def _frame(title: str, desc: str, body: list[str], height: int = H, css: str = "") -> Markup:
    n = next(_ids)
    return Markup(
        f'<svg class="chart{css}" viewBox="0 0 {W} {height}" role="img" aria-labelledby="chart{n}-t chart{n}-d" '
        f'preserveAspectRatio="xMidYMid meet">'
        f'<title id="chart{n}-t">{escape(title)}</title><desc id="chart{n}-d">{escape(desc)}</desc>'
        + "".join(body) + "</svg>"
    )


def _axes(days: Sequence[dt.date], top: int) -> list[str]:
    plot_h = H - PAD_T - PAD_B
    out = []
    for i in range(5):
        value = top * i // 4  # exact: top is a multiple of 4
        y = PAD_T + plot_h - plot_h * i / 4
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    slot = (W - PAD_L - PAD_R) / max(len(days), 1)
    for i in _labelled(len(days)):
        x, anchor = PAD_L + slot * (i + 0.5), "middle"
        if i == len(days) - 1 and len(days) > 1:  # the newest day: right-aligned, so it is never cut off
            x, anchor = min(x + slot / 2, W - 2), "end"
        out.append(f'<text class="tick" x="{x:.1f}" y="{H - 10}" text-anchor="{anchor}">{days[i]:%b %d}</text>')
    return out


def _labelled(n: int, labels: int = 6) -> list[int]:
    """Which of ``n`` slots get an axis label: about ``labels`` evenly spaced, always the
    last one (the newest day), dropping a label that would crowd it."""
    if n == 0:
        return []
    step = max(1, -(-n // labels))
    picks = [i for i in range(0, n, step) if n - 1 - i >= step * 0.6 or i == n - 1]
    return picks if picks and picks[-1] == n - 1 else picks + [n - 1]


def bar_chart(days: Sequence[dt.date], values: Sequence[int], *, title: str, desc: str, unit: str) -> Markup:
    """One bar per day."""
    top = _nice_max(max(values, default=0))
    plot_h = H - PAD_T - PAD_B
    slot = (W - PAD_L - PAD_R) / max(len(days), 1)
    body = _axes(days, top)
    for i, (day, value) in enumerate(zip(days, values)):
        if not value:
            continue
        h = plot_h * value / top
        x = PAD_L + slot * i + slot * 0.15
        body.append(
            f'<rect class="bar s-sent" x="{x:.1f}" y="{PAD_T + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}"><title>{day:%a %b %d}: {value} {escape(unit)}</title></rect>'
        )
    return _frame(title, desc, body)


def line_chart(days: Sequence[dt.date], series: Sequence[tuple[str, str, Sequence[int]]], *,
               title: str, desc: str) -> Markup:
    """One line per series ``(label, css class, values)``, with a legend."""
    top = _nice_max(max((v for _, _, vals in series for v in vals), default=0))
    plot_h = H - PAD_T - PAD_B
    slot = (W - PAD_L - PAD_R) / max(len(days), 1)
    body = _axes(days, top)
    for label, css, values in series:
        points = [(PAD_L + slot * (i + 0.5), PAD_T + plot_h - plot_h * v / top) for i, v in enumerate(values)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        body.append(f'<polyline class="line {css}" points="{path}"/>')
        for (x, y), day, v in zip(points, days, values):
            if v:
                body.append(f'<circle class="dot {css}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                            f'<title>{day:%a %b %d}: {v} {escape(label.lower())}</title></circle>')
    return _frame(title, desc, body)


def funnel_chart(steps: Sequence[dict[str, object]], *, title: str) -> Markup:
    """Horizontal bars per funnel step: all events (light) behind people only (solid)."""
    row_h, label_w = 36, 190  # "Complained (spam)" whole at the label size
    height = PAD_T + row_h * len(steps) + 8
    top = max((int(s["all"]) for s in steps), default=0) or 1  # type: ignore[call-overload]
    usable = W - label_w - 70
    body = []
    for i, step in enumerate(steps):
        y = PAD_T + i * row_h
        human, total = int(step["human"]), int(step["all"])  # type: ignore[call-overload]
        body.append(f'<text class="label" x="{label_w - 8}" y="{y + 20}" text-anchor="end">{escape(step["label"])}</text>')
        body.append(f'<rect class="bar s-all" x="{label_w}" y="{y + 4}" width="{usable * total / top:.1f}" height="24">'
                    f'<title>{escape(step["label"])}: {total} including machines</title></rect>')
        body.append(f'<rect class="bar s-human" x="{label_w}" y="{y + 4}" width="{usable * human / top:.1f}" height="24">'
                    f'<title>{escape(step["label"])}: {human} people</title></rect>')
        extra = f" ({total})" if total != human else ""
        body.append(f'<text class="value" x="{label_w + usable * max(human, total) / top + 6:.1f}" y="{y + 20}">'
                    f'{human}{extra}</text>')
    desc = "; ".join(f'{s["label"]} {s["human"]} people, {s["all"]} with machines' for s in steps)
    return _frame(title, desc, body, height=height, css=" funnel-chart")


def category_chart(buckets: Sequence[object], *, title: str, desc: str) -> Markup:
    """Horizontal bars per bucket (``label``, ``opens``, ``clicks``): opens above clicks."""
    row_h, label_w = 46, 190
    rows = list(buckets)
    height = PAD_T + row_h * max(len(rows), 1) + 8
    top = max((max(int(b.opens), int(b.clicks)) for b in rows), default=0) or 1  # type: ignore[attr-defined]
    usable = W - label_w - 50
    body = []
    if not rows:
        body.append(f'<text class="label" x="{W / 2}" y="{PAD_T + 20}" text-anchor="middle">No opens or clicks yet.</text>')
    for i, b in enumerate(rows):
        y = PAD_T + i * row_h
        label = str(b.label)  # type: ignore[attr-defined]
        body.append(f'<text class="label small" x="{label_w - 8}" y="{y + 24}" text-anchor="end">{escape(label if len(label) <= 22 else label[:21] + "…")}'
                    f'<title>{escape(label)}</title></text>')
        for j, (css, value, what) in enumerate((("s-open", int(b.opens), "opens"),  # type: ignore[attr-defined]
                                                ("s-click", int(b.clicks), "clicks"))):  # type: ignore[attr-defined]
            width = usable * value / top
            body.append(f'<rect class="bar {css}" x="{label_w}" y="{y + 6 + j * 17}" width="{width:.1f}" height="15">'
                        f'<title>{escape(label)}: {value} {what}</title></rect>')
            body.append(f'<text class="value small" x="{label_w + width + 5:.1f}" y="{y + 18 + j * 17}">{value}</text>')
    return _frame(title, desc, body, height=height, css=" category-chart")


def hour_chart(buckets: Sequence[object], *, title: str, desc: str) -> Markup:
    """Two bars (opens, clicks) per hour of the day, 00 to 23."""
    rows = list(buckets)
    top = _nice_max(max((max(int(b.opens), int(b.clicks)) for b in rows), default=0))  # type: ignore[attr-defined]
    plot_h = H - PAD_T - PAD_B
    slot = (W - PAD_L - PAD_R) / max(len(rows), 1)
    body = []
    for i in range(5):
        y = PAD_T + plot_h - plot_h * i / 4
        body.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>')
        body.append(f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{top * i // 4}</text>')
    for i, b in enumerate(rows):
        label = str(b.label)  # type: ignore[attr-defined]
        if i % 3 == 0:
            body.append(f'<text class="tick" x="{PAD_L + slot * (i + 0.5):.1f}" y="{H - 10}" '
                        f'text-anchor="middle">{escape(label)}h</text>')
        for j, (css, value, what) in enumerate((("s-open", int(b.opens), "opens"),  # type: ignore[attr-defined]
                                                ("s-click", int(b.clicks), "clicks"))):  # type: ignore[attr-defined]
            if not value:
                continue
            h = plot_h * value / top
            body.append(f'<rect class="bar {css}" x="{PAD_L + slot * i + slot * (0.1 + 0.4 * j):.1f}" '
                        f'y="{PAD_T + plot_h - h:.1f}" width="{slot * 0.4:.1f}" height="{h:.1f}">'
                        f'<title>{escape(label)}:00–{escape(label)}:59 UTC: {value} {what}</title></rect>')
    return _frame(title, desc, body)
