#!/usr/bin/env bash
# Builds helm/render, the `helm template` stand-in, offline from Debian's Go packages (which
# .ci/run installs). tests/deploy.rs builds it this way; so can you:
#
#   helm/render/build.sh /tmp/render
#   /tmp/render -chart helm/vigil -f helm/vigil/examples/one-region.yaml
set -euo pipefail
out=${1:?usage: helm/render/build.sh OUTPUT_BINARY}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
here=$(cd "$(dirname "$0")" && pwd)
gocode=/usr/share/gocode/src

if ! command -v go >/dev/null; then
  echo "go is not installed: .ci/run installs golang-go and the Go libraries helm/render uses" >&2
  exit 1
fi
for d in github.com/Masterminds/sprig github.com/Masterminds/semver github.com/ghodss/yaml \
  github.com/xeipuuv/gojsonschema github.com/BurntSushi/toml gopkg.in/yaml.v3; do
  if [ ! -d "$gocode/$d" ]; then
    echo "$gocode/$d is missing: .ci/run installs the golang-*-dev packages helm/render uses" >&2
    exit 1
  fi
done

# GOPATH mode, no module download. Debian installs sprig v3 and semver v3 without the /v3 their
# import paths carry, so a GOPATH of two links comes first.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for m in sprig semver; do
  mkdir -p "$work/src/github.com/Masterminds/$m"
  ln -s "$gocode/github.com/Masterminds/$m" "$work/src/github.com/Masterminds/$m/v3"
done
cd "$here"
GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOFLAGS= GOCACHE="${GOCACHE:-$work/cache}" \
  go build -o "$out" .
