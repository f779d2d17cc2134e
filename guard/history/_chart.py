"""
A balance-over-time chart as inline SVG: no script, no external file, so it
prints and can be mailed as it is.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence
    from decimal import Decimal

__all__ = ["svg_chart"]

MAX_POINTS = 400


def svg_chart(
    points: Sequence[tuple[dt.datetime, Decimal]],
    *,
    label: str,
    width: int = 720,
    height: int = 180,
) -> str:
    """
    Draw *points* (time, balance), oldest first, as a line in an SVG
    element of *width* x *height*; *label* names it for screen readers.
    """
    title = escape(label)
    head = (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{title}"><title>{title}</title>'
    )
    if not points:
        return (
            f'{head}<text x="{width // 2}" y="{height // 2}" text-anchor="middle" '
            f'class="empty">no balance recorded</text></svg>'
        )
    points = _thin(points)
    left, right, top, bottom = 70, width - 10, 10, height - 24
    t0 = points[0][0].timestamp()
    span = max(points[-1][0].timestamp() - t0, 1.0)
    low = min(v for _, v in points)
    high = max(v for _, v in points)
    rise = float(high - low) or 1.0

    def x(when: dt.datetime) -> float:
        return left + (when.timestamp() - t0) / span * (right - left)

    def y(value: Decimal) -> float:
        return bottom - float(value - low) / rise * (bottom - top)

    # A step line: a balance holds until the next movement.
    coords: list[str] = []
    for i, (when, value) in enumerate(points):
        if i:
            coords.append(f"{x(when):.1f},{y(points[i - 1][1]):.1f}")
        coords.append(f"{x(when):.1f},{y(value):.1f}")
    if len(points) == 1:
        coords.append(f"{right:.1f},{y(points[0][1]):.1f}")
    first = points[0][0].strftime("%Y-%m-%d %H:%M")
    last = points[-1][0].strftime("%Y-%m-%d %H:%M")
    return (
        f"{head}"
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>'
        f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{high:,.2f}</text>'
        f'<text x="{left - 4}" y="{bottom}" text-anchor="end">{low:,.2f}</text>'
        f'<text x="{left}" y="{height - 6}">{first}</text>'
        f'<text x="{right}" y="{height - 6}" text-anchor="end">{last}</text>'
        f'<polyline class="line" fill="none" points="{" ".join(coords)}"/>'
        "</svg>"
    )


def _thin(
    points: Sequence[tuple[dt.datetime, Decimal]],
) -> Sequence[tuple[dt.datetime, Decimal]]:
    # Keep the chart small: the last value of each of MAX_POINTS time slots.
    if len(points) <= MAX_POINTS:
        return points
    t0 = points[0][0].timestamp()
    span = max(points[-1][0].timestamp() - t0, 1.0)
    slots: dict[int, tuple[dt.datetime, Decimal]] = {}
    for when, value in points:
        slots[int((when.timestamp() - t0) / span * (MAX_POINTS - 1))] = (when, value)
    return [slots[k] for k in sorted(slots)]
