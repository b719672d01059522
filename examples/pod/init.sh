#!/bin/sh
# The init container (needs NET_ADMIN in the pod's network namespace): install the capture rules.
# EXCLUDE_OUTBOUND_PORTS keeps the sidecar's own CA traffic out (it runs as 1337 anyway).
# WEFT_HOME (/opt/weft) is where Weft is installed; the namespace tests point it at the checkout.
set -eu
exec node "${WEFT_HOME:-/opt/weft}/bin/weft.js" iptables install \
  --proxy-uid "${PROXY_UID:-1337}" \
  --exclude-outbound-ports "${EXCLUDE_OUTBOUND_PORTS:-15443}" \
  --exclude-inbound-ports "${EXCLUDE_INBOUND_PORTS:-}"
