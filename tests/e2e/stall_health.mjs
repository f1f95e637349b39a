// /health tells the truth: with rank 1 stopped (SIGSTOP) while a stream is running, no step
// completes, and once --stall-timeout passes /health is 503 with the age of the last step (also
// in /metrics), while the front node goes on answering other clients. After SIGCONT the stream
// finishes and /health is 200 again.
import assert from "node:assert/strict";
import net from "node:net";
import { startServer, metrics, otherRanks, post, skip, withDeadline } from "./harness.mjs";

withDeadline(120);
const STALL = 1;
const srv = await startServer(["--stall-timeout", String(STALL)]);
const ranks = await otherRanks(srv);
if (ranks.length === 0) {
  await srv.stop();
  skip("needs a second rank (the build found no mpirun to launch one)");
}

async function health() {
  const r = await fetch(`${srv.base}/health`);
  return { status: r.status, body: await r.json() };
}

// Idle for longer than the stall timeout is healthy: nothing is pending.
await new Promise((r) => setTimeout(r, (STALL + 0.5) * 1000));
let h = await health();
assert.equal(h.status, 200, JSON.stringify(h.body));
assert.equal(h.body.last_step_age_seconds, 0);

const sock = net.connect(srv.port, "127.0.0.1");
await new Promise((r) => sock.on("connect", r));
sock.write(post("/v1/completions", { prompt: "Once", stream: true, max_tokens: 400, ignore_eos: true }));
let got = "";
const ended = new Promise((r) => sock.on("close", r));
sock.on("data", (d) => { got += d; });
while ((got.match(/data: /g) || []).length < 5) await new Promise((r) => setTimeout(r, 10));

process.kill(ranks[0], "SIGSTOP");
try {
  const end = Date.now() + (STALL + 10) * 1000;
  do {
    await new Promise((r) => setTimeout(r, 100));
    h = await health();
  } while (h.status === 200 && Date.now() < end);
  assert.equal(h.status, 503, "a frozen compute rank left /health at 200");
  assert.equal(h.body.status, "stalled");
  assert.ok(h.body.last_step_age_seconds > STALL, JSON.stringify(h.body));
  assert.match(h.body.message, /no forward step has completed/);
  const m = await metrics(srv.base);
  assert.ok(m.get("sinkserve_last_step_age_seconds") > STALL);
  assert.equal(m.get("sinkserve_pending_requests"), 1);
  const models = await fetch(`${srv.base}/v1/models`);
  assert.equal(models.status, 200, "the front node stopped answering while compute was frozen");
  console.log(`rank 1 stopped: /health 503 after ${h.body.last_step_age_seconds.toFixed(1)} s without a step; others served`);
} finally {
  process.kill(ranks[0], "SIGCONT");
}
await ended;
assert.match(got, /"finish_reason":"length"/, "the stream did not finish after SIGCONT");
h = await health();
assert.equal(h.status, 200, JSON.stringify(h.body));
console.log("rank 1 resumed: the stream finished, /health 200");
await srv.stop();
