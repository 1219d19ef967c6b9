"""Combine the coverage of every process the tests started and print it as one line.

Fails (exit 1) under the floor in pyproject.toml ([tool.coverage.report] fail_under), unless
--no-gate: a run of a few tests (PYTEST_ARGS) is not expected to cover the apps.
"""

from __future__ import annotations

import glob
import io
import sys

import coverage
from coverage.exceptions import NoDataError


def main() -> int:
    cov = coverage.Coverage()
    data_file = cov.get_option("run:data_file")
    if glob.glob(f"{data_file}.*"):  # one file per process, until they are combined
        cov.combine()
        cov.save()
    else:
        cov.load()
    try:
        total = cov.report(file=io.StringIO())
    except NoDataError:
        print("Coverage: no data was recorded (was the suite run under `coverage run`?).")
        return 1
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
