#!/usr/bin/env bash
# Try coffre on real data: back up a directory, list the point, mount the vault and copy a file out
# of the mount, restore the same file with `coffre restore`, and check both copies.
#   scripts/try.sh [DIR]        (default DIR: /usr/share/doc, or this repository if missing)
# Everything happens in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/doc}
[ -d "$src" ] || src=$PWD
cargo build --release --quiet
bin=$PWD/target/release/coffre
work=$(mktemp -d /tmp/coffre-try.XXXXXX)
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then "$bin" umount "$work/mnt" || umount -l "$work/mnt"; fi
    rm -rf "$work"
}
trap cleanup EXIT
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
mkdir -p "$work/mnt"
echo "== coffre mount --daemon $work/mnt"
"$bin" mount --daemon "$work/mnt"
ls -l "$work/mnt/items/try/"
echo "== cp out of the mount"
cp -a "$work/mnt/items/try/latest/$file" "$work/from-mount"
"$bin" umount "$work/mnt"
cmp "$src/$file" "$work/from-mount" && echo "copied out of the mount: matches the original"

echo "== coffre restore try '$file' --to $work/out"
"$bin" restore try "$file" --to "$work/out"
if cmp "$src/$file" "$work/out/$file"; then   # a PATH is restored under its own path
    echo "restored file matches the original: $file"
else
    echo "MISMATCH: $file" >&2
    exit 1
fi

echo "== coffre verify (reads back every stored byte and checks it)"
"$bin" verify
