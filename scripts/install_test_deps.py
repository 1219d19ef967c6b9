"""Install what the browser and sandbox tests need: Debian's chromium, bubblewrap, ripgrep and
mmdebstrap (which builds the sandbox image the image tests run in), and nginx (the cluster
test puts it in front of two Daphnes: tests/test_cluster.py).

As root on Debian they are installed with apt-get when missing; anywhere else one line says
what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

NEEDED = {
    "chromium": "chromium",
    "bwrap": "bubblewrap",
    "rg": "ripgrep",
    "tmux": "tmux",
    "mmdebstrap": "mmdebstrap",
    "nginx": "nginx",
}


def main() -> int:
    missing = [package for binary, package in NEEDED.items() if not shutil.which(binary)]
    if not missing:
        return 0
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"Installing {' '.join(missing)} with apt-get…", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
            print(f"Could not install {' '.join(missing)} with apt-get.", file=sys.stderr)
            return 1
        return 0
    print(
        f"Missing {' '.join(missing)}: install them (Debian/Ubuntu: apt-get install "
        f"{' '.join(missing)}) and run again.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
