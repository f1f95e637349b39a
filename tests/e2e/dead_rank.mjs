// A rank that dies ends the job, and rank 0 first answers what is in flight: a stream gets an
// SSE error event and [DONE], a whole (non-streamed) request 503, instead of a bare EOF.
import assert from "node:assert/strict";
import net from "node:net";
import { startServer, otherRanks, post, skip, withDeadline } from "./harness.mjs";

withDeadline(90);
const srv = await startServer([]);
const ranks = await otherRanks(srv);
if (ranks.length === 0) {
  await srv.stop();
  skip("needs a second rank (the build found no mpirun to launch one)");
}

function open(body) {
  const sock = net.connect(srv.port, "127.0.0.1");
  const c = { got: "" };
  c.closed = new Promise((r) => sock.on("close", r));
  sock.on("data", (d) => { c.got += d; });
  sock.on("error", () => {});
  sock.on("connect", () => sock.write(post("/v1/completions", body)));
  return c;
}
const stream = open({ prompt: "Once", stream: true, max_tokens: 1000000, ignore_eos: true });
const whole = open({ prompt: "Once", max_tokens: 1000000, ignore_eos: true });
while ((stream.got.match(/data: /g) || []).length < 5) await new Promise((r) => setTimeout(r, 10));
const t0 = Date.now();
process.kill(ranks[0], "SIGKILL");
await Promise.all([stream.closed, whole.closed]);
const { code } = await srv.exited;
assert.notEqual(code, 0, "the job should fail when a rank dies");

const events = stream.got.split(/\r?\n/).filter((l) => l.startsWith("data: "));
assert.ok(events.length >= 2, stream.got.slice(-300));
assert.equal(events.at(-1), "data: [DONE]", `stream tail: ${stream.got.slice(-300)}`);
const err = JSON.parse(events.at(-2).slice(6));
assert.match(err.error.message, /lost a compute rank/);
assert.match(stream.got, /0\r\n\r\n$/, "the chunked stream was not terminated");
assert.match(whole.got, /^HTTP\/1\.1 503 /, `whole request got: ${whole.got.slice(0, 200)}`);
assert.match(whole.got, /lost a compute rank/);
console.log(`rank 1 killed: stream ended with an error event and [DONE], whole request 503, job ended in ${Date.now() - t0} ms`);
