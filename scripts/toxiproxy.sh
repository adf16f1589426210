#!/usr/bin/env bash
# Builds Shopify's toxiproxy server once, from the Go module proxy, into the
# shared cache keyed by version, and prints the binary's path on stdout.
# The partition tests put it on every link of a real stack.
#
#   scripts/toxiproxy.sh [VERSION]     (default v2.5.0)
#
# CHATBOT_CACHE (default ~/.cache/chatbot) is the cache the Makefile uses for
# the NLU environment; a fresh checkout reuses what another one built.
set -euo pipefail

version="${1:-v2.5.0}"
cache="${CHATBOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatbot}"
dir="$cache/toxiproxy-$version"
binary="$dir/toxiproxy-server"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

command -v go >/dev/null || {
    echo "error: Go is needed to build toxiproxy $version (https://go.dev/dl/)" >&2
    exit 1
}

echo "==> building toxiproxy $version into $dir (Go module proxy, about 30 s the first time)" >&2
mkdir -p "$cache"
build="$(mktemp -d "$cache/.toxiproxy-build.XXXXXX")"
trap 'rm -rf "$build"' EXIT
# -v names each package as it compiles: the progress of the build.
GOBIN="$build/bin" GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 \
    go install -v "github.com/Shopify/toxiproxy/v2/cmd/server@$version" 2>&1 \
    | sed 's/^/    /' >&2
"$build/bin/server" -version >/dev/null
mkdir -p "$dir"
# Moved into place last, so an interrupted build never leaves a binary behind.
mv "$build/bin/server" "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "==> toxiproxy $version ready: $binary" >&2
echo "$binary"
