#!/bin/sh
# The CA container: create the trust domain once, make one join token per workload, each written with the
# bundle into that workload's own directory ($TOKENS_DIR/<sa>/token, $TOKENS_DIR/<sa>/bundle.pem: compose
# mounts one volume per workload there, so a sidecar sees its own token and no other), then serve.
# Every path and address comes from the environment with the compose values as defaults, so the
# network-namespace tests (src/netns/pods.ts) run this same script:
#   WEFT_HOME (/opt/weft), CA_DIR (/var/lib/weft-ca), TRUST_DOMAIN (weft.local), TOKENS_DIR (/run/weft),
#   WORKLOADS ("client backend"), TOKEN_USES (4), CA_LISTEN (0.0.0.0:15443),
#   CA_SANS (extra DNS names or IPs for the server certificate, space-separated; "ca weft-ca" always),
#   CA_USER (started as root: hand the files to this UID and serve as it; compose sets 1337),
#   CA_METRICS (host:port for plain-HTTP /metrics, e.g. 0.0.0.0:15444; none by default).
set -eu
HOME_DIR=${WEFT_HOME:-/opt/weft}
DIR=${CA_DIR:-/var/lib/weft-ca}
TD=${TRUST_DOMAIN:-weft.local}
OUT=${TOKENS_DIR:-/run/weft}
meshca() { node "$HOME_DIR/bin/meshca.js" "$@"; }
[ -f "$DIR/intermediate-key.pem" ] || meshca init --trust-domain "$TD" --dir "$DIR"
for sa in ${WORKLOADS:-client backend}; do
  mkdir -p "$OUT/$sa"
  meshca bundle --dir "$DIR" --out "$OUT/$sa/bundle.pem" --force
  meshca token create --dir "$DIR" --id "spiffe://$TD/ns/default/sa/$sa" --ttl 1h --uses ${TOKEN_USES:-4} \
    | grep -o 'wjt\.[A-Za-z0-9_-]*' > "$OUT/$sa/token.tmp"
  mv "$OUT/$sa/token.tmp" "$OUT/$sa/token"
done
set -- --san ca --san weft-ca
for san in ${CA_SANS:-}; do set -- "$@" --san "$san"; done
if [ -n "${CA_METRICS:-}" ]; then set -- "$@" --metrics-listen "$CA_METRICS"; fi
if [ -n "${CA_USER:-}" ] && [ "$(id -u)" = 0 ]; then
  # Volumes are created root-owned: give the CA directory and each workload's files to the users that
  # need them, then drop root for good.
  chown -R "$CA_USER:$CA_USER" "$DIR" "$OUT"
  exec setpriv --reuid="$CA_USER" --regid="$CA_USER" --clear-groups -- \
    node "$HOME_DIR/bin/meshca.js" serve --dir "$DIR" --listen "${CA_LISTEN:-0.0.0.0:15443}" "$@"
fi
exec node "$HOME_DIR/bin/meshca.js" serve --dir "$DIR" --listen "${CA_LISTEN:-0.0.0.0:15443}" "$@"
