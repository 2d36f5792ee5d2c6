"""The admin overview's chart of finished jobs per hour, as server-rendered SVG.

No JavaScript: bars are rectangles, each with a ``<title>`` the browser shows
on hover; colours come from the stylesheet (admin.css), so they follow the
admin's light and dark themes.
"""

from __future__ import annotations

import math

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from async_jobs.overview import HourlyOutcomes

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 26
#: Share of an hour's slot its bar fills.
BAR = 0.72
#: An hour is labelled on the axis every this many hours.
LABEL_EVERY = 3


def nice_ticks(maximum: int, most: int = 5) -> list[int]:
    """0, then round steps (1, 2 or 5 times a power of 10) up to ``maximum``."""
    if maximum <= 0:
        return [0, 1]
    rough = maximum / (most - 1)
    magnitude = 10 ** math.floor(math.log10(rough)) if rough >= 1 else 1
    step = next(
        (magnitude * factor for factor in (1, 2, 5) if magnitude * factor >= rough),
        magnitude * 10,
    )
    step = max(1, int(step))
    return list(range(0, math.ceil(maximum / step) * step + 1, step))


def hourly_chart(outcomes: HourlyOutcomes) -> SafeString:
    """A ``<figure>``: the chart and its legend, with each series' total."""
    return format_html(
        '<figure class="async-jobs-chart">{}<figcaption>'
        '<span class="swatch succeeded"></span>Succeeded: {} '
        '<span class="swatch failed"></span>Failed for good: {}'
        '<span class="note">Hover over an hour for its figures; times in {}.</span>'
        "</figcaption></figure>",
        hourly_svg(outcomes),
        f"{sum(outcomes.succeeded):,}",
        f"{sum(outcomes.failed):,}",
        outcomes.hours[-1].tzname() or "server time",
    )


def hourly_svg(outcomes: HourlyOutcomes) -> SafeString:
    """An inline ``<svg>``: per hour, a bar of succeeded jobs, failed ones on top."""
    totals = [s + f for s, f in zip(outcomes.succeeded, outcomes.failed, strict=True)]
    ticks = nice_ticks(max(totals, default=0))
    top = ticks[-1]
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / len(outcomes.hours)

    def y(count: float) -> float:
        return TOP + plot_height * (1 - count / top)

    grid = format_html_join(
        "",
        '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
        '<text class="axis" x="{}" y="{}" text-anchor="end">{}</text>',
        (
            (
                LEFT,
                WIDTH - RIGHT,
                f"{y(t):.1f}",
                f"{y(t):.1f}",
                LEFT - 6,
                f"{y(t) + 4:.1f}",
                f"{t:,}",
            )
            for t in ticks
        ),
    )
    bars, labels = [], []
    for index, (hour, succeeded, failed) in enumerate(
        zip(outcomes.hours, outcomes.succeeded, outcomes.failed, strict=True)
    ):
        x = LEFT + slot * index + slot * (1 - BAR) / 2
        width = slot * BAR
        title = (
            f"{hour:%H}:00 to {(hour.hour + 1) % 24:02d}:00: "
            f"{succeeded:,} succeeded, {failed:,} failed"
        )
        bars.append(
            format_html(
                '<g><title>{}</title><rect class="hour" x="{}" y="{}" width="{}" '
                'height="{}"/>{}{}</g>',
                title,
                f"{LEFT + slot * index:.1f}",
                TOP,
                f"{slot:.1f}",
                plot_height,
                _bar("succeeded", x, width, y(succeeded), y(0)),
                _bar("failed", x, width, y(succeeded + failed), y(succeeded)),
            )
        )
        last = index == len(outcomes.hours) - 1
        # Every few hours, but none crowding the "now" of the last hour.
        if last or (hour.hour % LABEL_EVERY == 0 and index < len(outcomes.hours) - 2):
            labels.append(
                format_html(
                    '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>',
                    f"{x + width / 2:.1f}",
                    HEIGHT - 8,
                    "now" if last else f"{hour:%H}:00",
                )
            )
    empty = ""
    if not any(totals):
        empty = format_html(
            '<text class="empty" x="{}" y="{}" text-anchor="middle">{}</text>',
            LEFT + plot_width / 2,
            TOP + plot_height / 2,
            f"No job finished in the last {len(outcomes.hours)} hours.",
        )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" '
        'viewBox="0 0 {} {}" width="{}" height="{}" role="img" aria-label="{}">'
        "{}{}{}{}"
        '<line class="baseline" x1="{}" x2="{}" y1="{}" y2="{}"/></svg>',
        WIDTH,
        HEIGHT,
        WIDTH,
        HEIGHT,
        f"Jobs finished per hour over the last {len(outcomes.hours)} hours: "
        f"{sum(outcomes.succeeded):,} succeeded, {sum(outcomes.failed):,} failed.",
        grid,
        SafeString("".join(bars)),
        SafeString("".join(labels)),
        empty,
        LEFT,
        WIDTH - RIGHT,
        y(0),
        y(0),
    )


def _bar(kind: str, x: float, width: float, top: float, bottom: float) -> str:
    if bottom - top <= 0:
        return ""
    return format_html(
        '<rect class="{}" x="{}" y="{}" width="{}" height="{}"/>',
        kind,
        f"{x:.1f}",
        f"{top:.1f}",
        f"{width:.1f}",
        f"{max(bottom - top, 1):.1f}",
    )
