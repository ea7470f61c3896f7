"""Browser-test helpers shared by the dashboard tests: axe-core checks, screenshots, and the
performance entries of a page load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings

AXE = Path(settings.BASE_DIR) / "scripts" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = {"desktop": 1366, "phone": 390}


def htmx_idle(page: Any, timeout: float = 20_000) -> None:
    """Wait until no HTMX request, swap or settle is in flight (htmx marks each with a class):
    an element focused before a pending swap would be replaced under the keyboard."""
    page.wait_for_function(
        "() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')",
        timeout=timeout,
    )


def screenshot_dir() -> Path:
    """var/screenshots/ (CI keeps it as an artifact)."""
    path = Path(settings.BASE_DIR) / "var" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.x A/AA checks on the page as it is; the serious and critical ones."""
    if not page.evaluate("() => !!window.axe"):
        page.add_script_tag(content=AXE.read_text())
    found = page.evaluate(
        """async () => (await axe.run(document, {
              runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]},
              resultTypes: ["violations"],
            })).violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}))"""
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


def assert_accessible(page: Any, name: str) -> None:
    violations = axe_violations(page)
    assert not violations, f"{name}: {json.dumps(violations, indent=1)}"


def shoot(page: Any, name: str) -> None:
    """Full-page screenshots of the page at each width, as var/screenshots/<name>-<width>.png."""
    for label, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(150)  # plotly's responsive resize runs on a debounce
        page.screenshot(path=str(screenshot_dir() / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size({"width": WIDTHS["desktop"], "height": 900})


def load_figures(page: Any) -> dict[str, float]:
    """Bytes transferred and timings of the last navigation, from the performance entries."""
    figures: dict[str, float] = page.evaluate(
        """() => {
          const nav = performance.getEntriesByType("navigation")[0];
          const resources = performance.getEntriesByType("resource");
          const bytes = nav.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0);
          return {bytes, resources: resources.length, domContentLoaded: nav.domContentLoadedEventEnd,
                  load: nav.loadEventEnd};
        }"""
    )
    return figures
