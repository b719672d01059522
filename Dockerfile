# Weft image: the `weft` sidecar and `meshca`, compiled JavaScript on Node 24 LTS.
# Stage 1 compiles src/ to dist/ with the dev dependencies (and bundles the weft command into dist/weft/),
# then drops them; the image gets dist/, bin/, package.json and the production node_modules only (no
# TypeScript sources, no tsx, no compiler). It runs as UID 1337 (which `weft iptables install` exempts
# from capture) and needs no writable path of its own, so `readOnlyRootFilesystem: true` works.
# test/integration/image.test.ts runs these steps on the host.
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the `node` dev dependency (a Node 24 for machines with an older one) is not needed
# here, and koffi's prebuilt binary comes in its own package.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs ./scripts/
COPY src ./src
COPY bin ./bin
RUN node scripts/build.mjs && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 1337 weft && useradd -u 1337 -g 1337 -M -s /usr/sbin/nologin weft
WORKDIR /opt/weft
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
COPY examples/pod ./examples/pod
ENV PATH="/opt/weft/bin:${PATH}" NODE_ENV=production
USER 1337
# Healthy once the sidecar's /ready says so (first certificate loaded, listeners up); WEFT_ADMIN names
# the admin address when weft.yaml moves it from 127.0.0.1:15000.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD node -e "fetch('http://'+(process.env.WEFT_ADMIN||'127.0.0.1:15000')+'/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# The node flags are SIDECAR_NODE_FLAGS in src/runtime/node-flags.ts.
ENTRYPOINT ["node", "--initial-old-space-size=128", "/opt/weft/bin/weft.js"]
CMD ["--help"]
