#!/bin/sh
# The image's entrypoint: runs one process of deploy/Procfile, by name (web, worker, beat,
# release). The command is read from the Procfile itself, so the container runs exactly what
# the Procfile says (tests/test_deploy.py checks it and runs this script directly).
set -eu
name="${1:-web}"
procfile="${TANDEM_PROCFILE:-$(dirname "$0")/Procfile}"
line="$(sed -n "s/^${name}: //p" "$procfile")"
if [ -z "$line" ]; then
    echo "docker-entrypoint: no process named '${name}' in ${procfile}" \
        "(one of: $(sed -n 's/^\([a-z][a-z]*\): .*/\1/p' "$procfile" | tr '\n' ' '))" >&2
    exit 64
fi
shift || true
cd "$(dirname "$0")/.."
# "$@": extra arguments after the name are appended (e.g. `worker --concurrency 50`).
exec sh -c "$line \"\$@\"" "$name" "$@"
