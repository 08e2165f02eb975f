#!/usr/bin/env bash
# An out-of-tree crate (its own workspace) that depends only on fastworker-client by
# path: its dependency tree must have none of the host's heavy crates, and it must
# submit `add 5 3` to a real control plane and print 8.
set -euo pipefail
cd "$(dirname "$0")/.."

manifest=examples/rust-client/Cargo.toml
if cargo tree --manifest-path "$manifest" -e normal --prefix none \
    | grep -E '^(abi_stable|notify|clap|object|croner) '; then
    echo "fastworker-client's dependency tree has a crate it must not have" >&2
    exit 1
fi
CARGO_TARGET_DIR="$PWD/target" cargo build --quiet --manifest-path "$manifest"

log=$(mktemp)
target/debug/fastworker control-plane --base-address tcp://127.0.0.1:0 \
    --discovery-address tcp://127.0.0.1:0 --subworker-port 0 --no-gui \
    --task-modules target/debug/libmytasks.so >"$log" 2>&1 &
cp_pid=$!
trap 'kill "$cp_pid" 2>/dev/null || true; rm -f "$log"' EXIT
address=""
for _ in $(seq 1 300); do
    address=$(grep -o 'ready on tcp://[0-9.]*:[0-9]*' "$log" | head -1 | sed 's/^ready on //' || true)
    [ -n "$address" ] && break
    sleep 0.1
done
if [ -z "$address" ]; then
    echo "the control plane did not get ready:" >&2
    cat "$log" >&2
    exit 1
fi
out=$(timeout 30 target/debug/submit-add "$address")
echo "submit-add $address printed: $out"
[ "$out" = "8" ]
