// Slowloris: connections that trickle their headers fill --max-connections. Each is answered 408
// and closed once --read-timeout passes; meanwhile the admin port answers /health and /metrics,
// and a client whose connection was open before the flood is served on the main port.
import net from "node:net";
import assert from "node:assert/strict";
import { startServer, RawClient, splitPost, rawRequest, withDeadline } from "./harness.mjs";

withDeadline(120);
const MAX_CONN = 24, READ_TIMEOUT = 1;
const srv = await startServer(["--max-connections", String(MAX_CONN), "--read-timeout", String(READ_TIMEOUT),
                               "--admin-port", "0"]);
assert.ok(srv.adminPort, "no admin port announced");
const served = await new RawClient(srv.port).connect();

// MAX_CONN - 1 tricklers fill the limit beside the served client.
const t0 = Date.now();
const tricklers = [];
for (let i = 0; i < MAX_CONN - 1; ++i) {
  const s = net.connect(srv.port, "127.0.0.1");
  const t = { sock: s, got: "", closedAt: 0 };
  s.on("data", (d) => { t.got += d; });
  s.on("error", () => {});
  s.on("close", () => { t.closedAt = Date.now(); clearInterval(t.timer); });
  await new Promise((r) => s.on("connect", r));
  s.write("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
  t.timer = setInterval(() => { if (!s.destroyed) s.write("a"); }, 100);
  tricklers.push(t);
}
await new Promise((r) => setTimeout(r, 200));

// The main port is full; the admin port answers, and the client already connected is served.
const refused = await rawRequest(srv.port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
assert.equal(refused.status, 503, "the main port should be full");
for (const path of ["/health", "/metrics", "/health"]) {
  const r = await rawRequest(srv.adminPort, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, { timeoutMs: 3000 });
  assert.equal(r.status, 200, `admin ${path} under connection pressure: ${r.text.slice(0, 200)}`);
}
const other = await rawRequest(srv.adminPort, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
assert.equal(other.status, 404, "the admin port serves only /health and /metrics");
const r = await served.request(splitPost("/v1/completions", { prompt: "Once", max_tokens: 4 }), 10000);
assert.equal(r.status, 200);
console.log("under pressure: main port 503, admin /health and /metrics 200, open connection served");

// Every trickler is answered 408 and closed after about --read-timeout, not after the idle timeout.
const end = Date.now() + 10000;
while (tricklers.some((t) => !t.closedAt) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
for (const t of tricklers) {
  assert.ok(t.closedAt, "a trickling connection was never closed");
  assert.match(t.got, /^HTTP\/1\.1 408 /, `trickler got: ${t.got.slice(0, 100)}`);
  assert.ok(t.closedAt - t0 < (READ_TIMEOUT + 4) * 1000, `closed after ${t.closedAt - t0} ms`);
}
const slowest = Math.max(...tricklers.map((t) => t.closedAt - t0));
console.log(`${tricklers.length} slow senders: 408 and closed within ${slowest} ms`);

// Room again on the main port.
const after = await rawRequest(srv.port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
assert.equal(after.status, 200);
served.close();
await srv.stop();
