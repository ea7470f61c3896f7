"""`manage.py disk_usage`: what uses the disk under DATA_DIR, by category, and what the
retention policy would reclaim now (`--collect` reclaims it)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs import retention


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


class Command(BaseCommand):
    help = "Report what uses the disk (by category) and what garbage collection would free."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument(
            "--collect", action="store_true", help="apply the retention policy now (as beat does)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = retention.disk_usage()
        reclaim = retention.reclaimable()
        collected = retention.collect_garbage() if options["collect"] else None
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "categories": [
                            {"category": r.category, "bytes": r.bytes, "items": r.items}
                            for r in rows
                        ],
                        "reclaimable": {"bytes": reclaim.bytes, "items": reclaim.items},
                        "collected": collected,
                    },
                    indent=2,
                )
            )
            return
        width = max(len(r.category) for r in rows)
        self.stdout.write(f"{'category':<{width}}  {'size':>10}  {'items':>6}")
        for r in rows:
            self.stdout.write(f"{r.category:<{width}}  {human(r.bytes):>10}  {r.items:>6}")
        self.stdout.write(f"{'total':<{width}}  {human(sum(r.bytes for r in rows)):>10}")
        freed = sum(reclaim.bytes.values())
        self.stdout.write(
            f"\nReclaimable now under the retention policy: {human(freed)} "
            f"({sum(reclaim.items.values())} items)"
        )
        for category, size in sorted(reclaim.bytes.items()):
            self.stdout.write(f"  {category}: {human(size)} ({reclaim.items[category]} items)")
        if collected is not None:
            self.stdout.write(
                f"Collected: {human(collected['bytes'])} ({collected['items']} items)"
            )
