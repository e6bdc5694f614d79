#!/usr/bin/env bash
# Try coffre on real data: back up a directory, list the point, restore one file and check it.
#   scripts/try.sh [DIR]        (default DIR: /usr/share/doc, or this repository if missing)
# Everything happens in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/doc}
[ -d "$src" ] || src=$PWD
cargo build --release --quiet
bin=$PWD/target/release/coffre
work=$(mktemp -d /tmp/coffre-try.XXXXXX)
trap 'rm -rf "$work"' EXIT
export COFFRE_VAULT=$work/vault

echo "== coffre backup --item try $src"
"$bin" backup --item try "$src"
echo "== change nothing, back up again (incremental: nothing new is stored)"
"$bin" backup try
echo "== coffre points"
"$bin" points
echo "== coffre stats"
"$bin" stats

# Pick a regular file from the source and restore just that file.
file=$(cd "$src" && { find . -type f -size +1k -readable 2>/dev/null || true; } | sort | sed -n 1p)
file=${file#./}
echo "== coffre restore try '$file' --to $work/out"
"$bin" restore try "$file" --to "$work/out"
if cmp "$src/$file" "$work/out/$(basename "$file")"; then
    echo "restored file matches the original: $file"
else
    echo "MISMATCH: $file" >&2
    exit 1
fi
