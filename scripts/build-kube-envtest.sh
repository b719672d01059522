#!/usr/bin/env bash
# Builds kube-apiserver (k8s.io/kubernetes cmd/kube-apiserver) and etcd (go.etcd.io/etcd/server/v3) from
# their Go modules into a cache outside the checkout, so a machine builds them once:
#   ${WEFT_ENVTEST_CACHE:-$HOME/.cache/weft/envtest}/<kube>-etcd<etcd>/bin/{kube-apiserver,etcd}
# Prints that bin directory on its last line. The Kubernetes tests find it the same way
# (test/helpers/kube-envtest.ts) or through WEFT_ENVTEST_BIN.
# Frugal by design: nice 19 and one package at a time (-p=1), since the machine is shared;
# WEFT_ENVTEST_BUILD_JOBS=2 builds two at a time (CI, where nothing else runs).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=/dev/null
. "$here/hack/k8s-envtest/versions.env"
cache_root="${WEFT_ENVTEST_CACHE:-$HOME/.cache/weft/envtest}"
dest="$cache_root/${KUBE_VERSION}-etcd${ETCD_VERSION}"
bin="$dest/bin"
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "build-kube-envtest: go is not on PATH" >&2; exit 2; }
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS="${GOFLAGS:-} -p=${WEFT_ENVTEST_BUILD_JOBS:-1} -trimpath -buildvcs=false -mod=mod"
export CGO_ENABLED=0
log() { echo "build-kube-envtest: $*" >&2; }

# --- kube-apiserver: a build module requiring k8s.io/kubernetes, with every staging module pinned
if [ ! -x "$bin/kube-apiserver" ]; then
mkdir -p "$work/kube"
cd "$work/kube"
kube_gomod="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[ -f "$kube_gomod" ] || { log "could not download k8s.io/kubernetes@${KUBE_VERSION}"; exit 1; }
go_line="$(grep -m1 '^go ' "$kube_gomod")"
{
  echo "module weft.local/k8s-envtest/kube"
  echo
  echo "$go_line"
  echo
  echo "require k8s.io/kubernetes ${KUBE_VERSION}"
  echo
  echo "replace ("
  # k8s.io/X => ./staging/src/k8s.io/X  becomes  k8s.io/X => k8s.io/X STAGING_VERSION
  sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/[a-z0-9-]*$#\t\1 => \1 '"${STAGING_VERSION}"'#p' "$kube_gomod"
  echo ")"
} >go.mod
n_replace="$(grep -c '=>' go.mod || true)"
log "kube-apiserver ${KUBE_VERSION} with ${n_replace} staging modules at ${STAGING_VERSION} ($go_line)"
printf 'package tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' >tools.go
go mod tidy >&2
start=$(date +%s)
nice -n 19 go build -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)" \
  -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
log "kube-apiserver built in $(( $(date +%s) - start ))s"
fi

# --- etcd: its own build module (its dependency versions must not be unified with the API server's)
if [ ! -x "$bin/etcd" ]; then
mkdir -p "$work/etcd"
cd "$work/etcd"
go_line_etcd="$(go mod download -json "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' | xargs grep -m1 '^go ')"
printf 'module weft.local/k8s-envtest/etcd\n\n%s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$go_line_etcd" "$ETCD_VERSION" >go.mod
cat >main.go <<'GO'
// etcd's own entry point (go.etcd.io/etcd/server/v3/etcdmain), built for the test harness.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go mod tidy >&2
start=$(date +%s)
nice -n 19 go build -ldflags "-s -w" -o "$bin/etcd.tmp" . >&2
mv "$bin/etcd.tmp" "$bin/etcd"
log "etcd built in $(( $(date +%s) - start ))s"
fi
echo "$bin"
