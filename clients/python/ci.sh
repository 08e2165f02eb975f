#!/usr/bin/env bash
# What CI runs for the Python client, from the repository root, with
# target/debug/fastworker and target/debug/libmytasks.so built: a fresh venv, the package
# installed from clients/python, its tests without and with a cluster key, the FastAPI
# example's test, and the protocol self-check. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="$PWD/target/debug/fastworker"
PLUGIN="$PWD/target/debug/libmytasks.so"
for f in "$BIN" "$PLUGIN"; do
    [ -f "$f" ] || { echo "missing $f (cargo build --workspace)" >&2; exit 1; }
done

venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check ./clients/python \
    "pytest==8.3.4" "fastapi==0.115.6" "httpx==0.28.1"
py="$venv/bin/python"
export FASTWORKER_BIN="$BIN" FASTWORKER_PLUGIN="$PLUGIN"
# the tests import the installed package, not the source tree
cd clients/python/tests
FASTWORKER_TEST_KEY=0 timeout 240 "$py" -m pytest -q -p no:cacheprovider . ../../../examples/fastapi
FASTWORKER_TEST_KEY=1 timeout 240 "$py" -m pytest -q -p no:cacheprovider . ../../../examples/fastapi
cd ../../..
timeout 240 "$py" examples/python/test_protocol.py "$BIN" "$PLUGIN"
echo "python client: all checks passed"
