#!/bin/sh
# The sidecar container: write weft.yaml from the environment and the services file, then run the proxy
# (as UID 1337). The identity comes from the CA server (the default) or, with IDENTITY_DIR, from files
# (key.pem, chain.pem, bundle.pem as `meshca issue --out` writes them, readable by UID 1337:
# `meshca issue --owner 1337`). With the CA: wait for the trust bundle; the join token is
# $TOKENS_DIR/token, this workload's own (ca.sh writes one directory per workload); weft reads it at each
# attempt, so it may appear after the proxy started, and the proxy keeps retrying (not ready) until the
# CA answers.
# Environment (compose defaults in brackets; the namespace tests in src/netns/pods.ts set them per pod):
#   WEFT_SA (required), TRUST_DOMAIN (weft.local), WEFT_HOME (/opt/weft), TOKENS_DIR (/run/weft),
#   WEFT_CONFIG (/tmp/weft.yaml), STATE_DIR (/tmp/weft-state), CA_URL (https://ca:15443),
#   IDENTITY_DIR (unset: use the CA), INBOUND_MODE (strict),
#   APP_ADDRESS (127.0.0.1: inbound.appAddress, where the app listens when the sidecar runs without
#     inbound capture; with capture it dials the pod address each connection was sent to),
#   SERVICES_FILE (/etc/weft/services.yaml),
#   WEFT_EXTRA_YAML (more top-level weft.yaml lines, e.g. a policy: block; empty by default; it may not
#     repeat a key this script writes: trustDomain, identity, listeners, inbound, discovery),
#   WEFT_DISCOVERY_YAML (the whole discovery: value, e.g. with kubernetes:; default the services file).
set -eu
SA=${WEFT_SA:?set WEFT_SA to the workload service account}
TD=${TRUST_DOMAIN:-weft.local}
RUN=${TOKENS_DIR:-/run/weft}
CONF=${WEFT_CONFIG:-/tmp/weft.yaml}
EXTRA=${WEFT_EXTRA_YAML:-}
clash=$(printf '%s\n' "$EXTRA" | grep -oE '^(trustDomain|identity|listeners|inbound|discovery):' | head -1 || true)
if [ -n "$clash" ]; then
  echo "sidecar: WEFT_EXTRA_YAML repeats the key ${clash%:}, which sidecar.sh writes itself; use APP_ADDRESS, INBOUND_MODE, IDENTITY_DIR, SERVICES_FILE or WEFT_DISCOVERY_YAML instead" >&2
  exit 2
fi
if [ -n "${IDENTITY_DIR:-}" ]; then
  IDENTITY="  files: { cert: $IDENTITY_DIR/chain.pem, key: $IDENTITY_DIR/key.pem, bundle: $IDENTITY_DIR/bundle.pem }"
else
  i=0
  while [ ! -s "$RUN/bundle.pem" ]; do
    i=$((i + 1))
    [ $((i % 20)) -eq 0 ] && echo "sidecar: waiting for the trust bundle $RUN/bundle.pem (from the CA)" >&2
    sleep 0.5
  done
  IDENTITY="  ca:
    url: ${CA_URL:-https://ca:15443}
    bundle: $RUN/bundle.pem
    id: spiffe://$TD/ns/default/sa/$SA
    tokenFile: $RUN/token
    stateDir: ${STATE_DIR:-/tmp/weft-state}"
fi
DISCOVERY="{ file: ${SERVICES_FILE:-/etc/weft/services.yaml} }"
[ -n "${WEFT_DISCOVERY_YAML:-}" ] && DISCOVERY=$WEFT_DISCOVERY_YAML
cat > "$CONF" <<YAML
trustDomain: $TD
identity:
$IDENTITY
listeners:
  admin: { address: 127.0.0.1, port: 15000 }
  metrics: { address: 0.0.0.0, port: 15020 }
inbound: { mode: ${INBOUND_MODE:-strict}, appAddress: ${APP_ADDRESS:-127.0.0.1} }
discovery: $DISCOVERY
$EXTRA
YAML
# The node flags are SIDECAR_NODE_FLAGS (src/runtime/node-flags.ts).
exec node --initial-old-space-size=128 "${WEFT_HOME:-/opt/weft}/bin/weft.js" proxy --config "$CONF"
