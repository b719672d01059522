// Runs inside a test's network namespace (a Node process cannot switch namespaces itself): listens on
// the capture port, connects to each target given on argv, and prints one JSON line per accepted
// connection with the original destination LinuxOriginalDst read, then "done".
import { connect, createServer, type Socket } from "node:net";
import { LinuxOriginalDst } from "../../../src/proxy/capture/original-dst.ts";

const port = Number(process.argv[2]);
const targets = process.argv.slice(3).map((t) => {
  const i = t.lastIndexOf(":");
  return { host: t.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(t.slice(i + 1)) };
});
const resolver = new LinuxOriginalDst();

const server = createServer((socket: Socket) => {
  let line: Record<string, unknown>;
  try {
    line = { ok: true, local: socket.localAddress, dst: resolver.resolve(socket) };
  } catch (err) {
    line = {
      ok: false,
      local: socket.localAddress,
      code: (err as { code?: string }).code,
      reason: (err as { reason?: string }).reason,
    };
  }
  process.stdout.write(`${JSON.stringify(line)}\n`);
  socket.end();
});
server.listen({ port, host: "::", ipv6Only: false }, async () => {
  for (const target of targets) {
    await new Promise<void>((resolve) => {
      const c = connect(target, () => c.end());
      c.on("close", () => resolve());
      c.on("error", (err) => {
        process.stdout.write(`${JSON.stringify({ ok: false, connectError: err.message, target })}\n`);
        resolve();
      });
      c.resume();
    });
  }
  process.stdout.write("done\n");
  server.close();
});
