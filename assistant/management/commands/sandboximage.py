"""``python manage.py sandboximage build|list|remove``: the sandbox images of this machine.

    sandboximage build NAME [--packages p1,p2 ...] [--suite bookworm]
    sandboximage list
    sandboximage remove NAME

Building needs root on Debian with mmdebstrap; elsewhere it says in one line what is missing.
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from assistant import images


class Command(BaseCommand):
    help = "Build, list or remove the sandbox images tool calls run in (see README, The sandbox)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        build = sub.add_parser("build", help="Build an image from Debian packages (mmdebstrap)")
        build.add_argument("name")
        build.add_argument(
            "--packages",
            action="append",
            default=None,
            help="Comma-separated Debian packages (repeatable); default: "
            + ",".join(images.DEFAULT_PACKAGES),
        )
        build.add_argument("--suite", default=images.DEFAULT_SUITE)
        sub.add_parser("list", help="The images on this machine, and host")
        remove = sub.add_parser("remove", help="Remove an image from this machine")
        remove.add_argument("name")

    def handle(self, *args, action: str, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except images.ImageError as exc:
            raise CommandError(str(exc)) from exc

    def _build(self, *, name: str, packages, suite: str, **_):
        chosen = (
            [p for group in packages for p in group.split(",")]
            if packages
            else list(images.DEFAULT_PACKAGES)
        )
        images.check_name(name)
        if name == images.HOST:
            raise CommandError("“host” is the server's own system; give the image another name.")
        if why := images.cannot_build():
            raise CommandError(why)
        self.stdout.write(f"Building {name} ({suite}: {', '.join(chosen)})…")
        started = time.monotonic()
        image = images.build(name, chosen, suite=suite)
        self.stdout.write(
            f"Built {image.name} in {time.monotonic() - started:.0f} s: "
            f"{images.human_size(image.size_bytes)} at {image.root}"
        )

    def _list(self, **_):
        rows = [("NAME", "SIZE", "BUILT", "PACKAGES")]
        for image in images.available():
            if image.is_host:
                rows.append((image.name, "—", "—", images.HOST_LABEL))
            else:
                rows.append(
                    (
                        image.name,
                        images.human_size(image.size_bytes),
                        image.built_at or "—",
                        ",".join(image.packages) or "(minbase only)",
                    )
                )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[3]]).rstrip())

    def _remove(self, *, name: str, **_):
        images.remove(name)
        self.stdout.write(f"Removed {name}.")
