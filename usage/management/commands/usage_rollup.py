from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from usage.rollups import rebuild


class Command(BaseCommand):
    help = (
        "Rebuild the usage dashboards' daily rollups from the usage records (all days, or "
        "--from/--to, UTC, inclusive). Needed only after records were changed by hand."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--from", dest="start", help="first day, YYYY-MM-DD")
        parser.add_argument("--to", dest="end", help="last day, YYYY-MM-DD")

    def handle(self, *args, start=None, end=None, **options) -> None:
        try:
            first = date.fromisoformat(start) if start else None
            last = date.fromisoformat(end) if end else None
        except ValueError as exc:
            raise CommandError(f"Dates are YYYY-MM-DD: {exc}")
        written = rebuild(first, last)
        self.stdout.write(f"Wrote {written} rollup rows.")
