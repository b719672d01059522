#!/bin/sh
# The CA container: create the trust domain once, make one join token per workload (written to the
# shared /run/weft volume, one file each), publish the bundle, then serve.
set -eu
DIR=${CA_DIR:-/var/lib/weft-ca}
TD=${TRUST_DOMAIN:-weft.local}
OUT=${TOKENS_DIR:-/run/weft}
meshca() { node /opt/weft/bin/meshca.js "$@"; }
[ -f "$DIR/intermediate-key.pem" ] || meshca init --trust-domain "$TD" --dir "$DIR"
mkdir -p "$OUT"
meshca bundle --dir "$DIR" --out "$OUT/bundle.pem" --force
for sa in ${WORKLOADS:-client backend}; do
  meshca token create --dir "$DIR" --id "spiffe://$TD/ns/default/sa/$sa" --ttl 1h --uses ${TOKEN_USES:-4} \
    | grep -o 'wjt\.[A-Za-z0-9_-]*' > "$OUT/$sa.token"
done
exec node /opt/weft/bin/meshca.js serve --dir "$DIR" --listen 0.0.0.0:15443 --san ca --san weft-ca
