#!/bin/sh
# The sidecar container: wait for the CA's token and bundle, write weft.yaml from the environment and
# the services file, then run the proxy (as UID 1337).
set -eu
SA=${WEFT_SA:?set WEFT_SA to the workload service account}
TD=${TRUST_DOMAIN:-weft.local}
RUN=${TOKENS_DIR:-/run/weft}
CONF=${WEFT_CONFIG:-/tmp/weft.yaml}
i=0
while [ ! -s "$RUN/$SA.token" ] || [ ! -s "$RUN/bundle.pem" ]; do
  i=$((i + 1)); [ $i -gt 120 ] && { echo "sidecar: no token for $SA in $RUN after 60 s" >&2; exit 1; }
  sleep 0.5
done
cat > "$CONF" <<YAML
trustDomain: $TD
identity:
  ca:
    url: ${CA_URL:-https://ca:15443}
    bundle: $RUN/bundle.pem
    id: spiffe://$TD/ns/default/sa/$SA
    tokenFile: $RUN/$SA.token
    stateDir: /tmp/weft-state
listeners:
  admin: { address: 0.0.0.0, port: 15000 }
inbound: { mode: ${INBOUND_MODE:-strict} }
discovery: { file: ${SERVICES_FILE:-/etc/weft/services.yaml} }
YAML
exec node /opt/weft/bin/weft.js proxy --config "$CONF"
