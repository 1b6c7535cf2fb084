#!/usr/bin/env bash
# Regenerates the Go code of schemas/proto/udpgate/** into schemas/*pb/ with
# Debian's protoc and the protoc-gen-go pinned in go.mod (go tool).
# Usage: schemas/generate.sh [OUTDIR]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
plugin="$(go tool -n protoc-gen-go)"
protoc --plugin=protoc-gen-go="$plugin" \
  -I schemas/proto \
  --go_out="$out" --go_opt=module=github.com/udpgate/udpgate \
  $(cd schemas/proto && find udpgate -name '*.proto' | sort)
