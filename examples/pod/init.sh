#!/bin/sh
# The init container (needs NET_ADMIN in the pod's network namespace): install the capture rules.
# EXCLUDE_OUTBOUND_PORTS keeps the sidecar's own CA traffic out (it runs as 1337 anyway).
set -eu
exec node /opt/weft/bin/weft.js iptables install \
  --proxy-uid "${PROXY_UID:-1337}" \
  --exclude-outbound-ports "${EXCLUDE_OUTBOUND_PORTS:-15443}" \
  --exclude-inbound-ports "${EXCLUDE_INBOUND_PORTS:-}"
