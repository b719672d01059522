# Weft image: the `weft` sidecar and `meshca`, TypeScript run through tsx (a runtime dependency).
FROM node:20-bookworm-slim AS deps
WORKDIR /opt/weft
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 1337 weft && useradd -u 1337 -g 1337 -M -s /usr/sbin/nologin weft
WORKDIR /opt/weft
COPY --from=deps /opt/weft/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
COPY examples/pod ./examples/pod
ENV PATH="/opt/weft/bin:${PATH}"
# The proxy runs as UID 1337, which `weft iptables install` exempts from capture.
USER 1337
# --initial-old-space-size: SIDECAR_NODE_FLAGS in src/runtime/node-flags.ts.
ENTRYPOINT ["node", "--initial-old-space-size=128", "--min-semi-space-size=8", "/opt/weft/bin/weft.js"]
CMD ["--help"]
