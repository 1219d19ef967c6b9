"""Combine the coverage of every process the tests started and print it as one line.

Fails (exit 1) under the floor in pyproject.toml ([tool.coverage.report] fail_under), unless
--no-gate: a run of a few tests (PYTEST_ARGS) is not expected to cover the apps.
"""

from __future__ import annotations

import sys

import coverage


def main() -> int:
    cov = coverage.Coverage()
    cov.combine(quiet=True)
    cov.save()
    with open("/dev/null", "w") as sink:
        total = cov.report(file=sink)
    floor = float(cov.get_option("report:fail_under") or 0)
    gated = "--no-gate" not in sys.argv
    verdict = f" (floor {floor:.0f}%: ok)" if gated and total >= floor else ""
    print(f"Coverage of the apps, across all test processes: {total:.1f}%{verdict}")
    if gated and total < floor:
        print(f"Coverage {total:.1f}% is under the floor of {floor:.0f}%.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
