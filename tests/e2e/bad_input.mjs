// Every kind of bad input gets its status code and an OpenAI-style error body; a client that
// disconnects mid-stream has its slot freed; connections beyond the limit get 503; SIGTERM during
// a stream ends the stream and the server exits 0.
import net from "node:net";
import assert from "node:assert/strict";
import { startServer, rawRequest, post, waitMetrics, metrics, withDeadline } from "./harness.mjs";

withDeadline(200);
const SLOTS = 4, MAX_CONN = 6;
const srv = await startServer(["--sessions", String(SLOTS), "--max-body", "4096", "--max-connections", String(MAX_CONN),
                               "--client-buffer", "65536"]);
const chat = "/v1/chat/completions";
const msgs = [{ role: "user", content: "Hi" }];

async function expectError(what, bytes, status, param) {
  const r = await rawRequest(srv.port, bytes);
  assert.equal(r.status, status, `${what}: got ${r.text.slice(0, 200)}`);
  const body = JSON.parse(r.text.slice(r.text.indexOf("\r\n\r\n") + 4));
  assert.equal(typeof body.error.message, "string", what);
  assert.ok("type" in body.error && "param" in body.error && "code" in body.error, what);
  if (param !== undefined) assert.equal(body.error.param, param, `${what}: param`);
  console.log(`${what}: ${status} ${body.error.message}`);
}

await expectError("malformed JSON", post(chat, '{"messages": [}'), 400);
await expectError("body not an object", post(chat, "[1,2]"), 400);
await expectError("messages wrong type", post(chat, { messages: "hello" }), 400, "messages");
await expectError("message without role", post(chat, { messages: [{ content: "x" }] }), 400, "messages[0].role");
await expectError("temperature wrong type", post(chat, { messages: msgs, temperature: "hot" }), 400, "temperature");
await expectError("temperature out of range", post(chat, { messages: msgs, temperature: 7 }), 400, "temperature");
await expectError("negative max_tokens", post(chat, { messages: msgs, max_tokens: -1 }), 400, "max_tokens");
await expectError("fractional max_tokens", post(chat, { messages: msgs, max_tokens: 2.5 }), 400, "max_tokens");
await expectError("stop wrong type", post(chat, { messages: msgs, stop: 3 }), 400, "stop");
await expectError("prompt missing", post("/v1/completions", { max_tokens: 3 }), 400, "prompt");
await expectError("unknown model", post(chat, { model: "gpt-9", messages: msgs }), 400, "model");
await expectError("bad session id", post(chat, { messages: msgs, session: "a b/c" }), 400, "session");
await expectError("JSON followed by a NUL and more", post(chat, JSON.stringify({ messages: msgs }) + "\0garbage"), 400);
await expectError("empty session id", post(chat, { messages: msgs, session: "" }), 400, "session");
await expectError("body over --max-body", post(chat, { messages: [{ role: "user", content: "x".repeat(5000) }] }), 413);
await expectError("unknown route", "GET /v2/whatever HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404);
await expectError("wrong method", "GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405);
await expectError("unknown session", "DELETE /v1/sessions/none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404);
// HEAD /health: GET's status and headers, no body.
{
  const r = await rawRequest(srv.port, "HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert.equal(r.status, 200, r.text);
  assert.match(r.text, /content-length: [1-9]/i);
  assert.ok(r.text.endsWith("\r\n\r\n"), `HEAD answered with a body: ${r.text}`);
  console.log("HEAD /health: 200, no body");
}
// HTTP/1.0 has no chunked encoding: a stream's body ends where the server closes the connection.
{
  const body = JSON.stringify({ prompt: "Once", stream: true, max_tokens: 3 });
  const r = await rawRequest(srv.port, `POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n` +
                                       `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  assert.equal(r.status, 200, r.text);
  assert.doesNotMatch(r.text, /transfer-encoding/i, "chunked reply to HTTP/1.0");
  const sse = r.text.slice(r.text.indexOf("\r\n\r\n") + 4);
  assert.ok(sse.startsWith("data: {"), `not a close-delimited event stream: ${sse.slice(0, 80)}`);
  assert.ok(sse.endsWith("data: [DONE]\n\n"), `stream tail: ${sse.slice(-80)}`);
  console.log("HTTP/1.0 stream: close-delimited");
}
// A session's history must continue what it has seen.
{
  const first = await fetch(`${srv.base}${chat}`, { method: "POST", body: JSON.stringify({ messages: msgs, max_tokens: 2, session: "s1" }) });
  assert.equal(first.status, 200);
  assert.equal(first.headers.get("x-session-id"), "s1");
  await first.json();
  await expectError("history differs from the session's",
    post(chat, { messages: [{ role: "user", content: "Other" }, { role: "user", content: "x" }], session: "s1" }), 400, null);
}

// A client that goes away mid-stream: its generation is cancelled and its slot freed.
{
  const sock = net.connect(srv.port, "127.0.0.1");
  await new Promise((r) => sock.on("connect", r));
  sock.write(post(chat, { messages: msgs, stream: true, max_tokens: 1000000, ignore_eos: true }));
  let got = "";
  await new Promise((resolve, reject) => {
    sock.on("data", (d) => { got += d; if ((got.match(/data: /g) || []).length > 5) resolve(); });
    sock.on("close", () => reject(new Error(`stream closed early: ${got.slice(0, 300)}`)));
  });
  const busy = await metrics(srv.base);
  assert.equal(busy.get("sinkserve_running_requests"), 1);
  sock.destroy();
  const m = await waitMetrics(srv.base, (x) => x.get("sinkserve_running_requests") === 0 &&
                                              x.get('sinkserve_generations_total{outcome="cancelled"}') === 1);
  assert.equal(m.get('sinkserve_generations_total{outcome="cancelled"}'), 1, "disconnect did not cancel");
  assert.equal(m.get("sinkserve_running_requests"), 0);
  assert.equal(m.get("sinkserve_free_slots"), SLOTS - 1, "slot of the vanished client not freed");  // s1 holds one
  console.log("disconnect mid-stream: cancelled, slot freed");
}

// A client that stops reading: others are served meanwhile, and once its queued output passes
// --client-buffer its request is cancelled and its connection closed.
{
  const before = (await metrics(srv.base)).get('sinkserve_generations_total{outcome="cancelled"}');
  const sock = net.connect(srv.port, "127.0.0.1");
  await new Promise((r) => sock.on("connect", r));
  sock.write(post(chat, { messages: msgs, stream: true, max_tokens: 100000000, ignore_eos: true }));
  const closed = new Promise((r) => sock.on("close", r));
  sock.pause();
  const r = await fetch(`${srv.base}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "The dog", max_tokens: 8 }) });
  assert.equal(r.status, 200, "a normal client was not served beside a stalled one");
  assert.equal((await r.json()).usage.completion_tokens, 8);
  const m = await waitMetrics(srv.base, (x) => x.get('sinkserve_generations_total{outcome="cancelled"}') === before + 1, 90);
  assert.equal(m.get('sinkserve_generations_total{outcome="cancelled"}'), before + 1, "the stalled client was never cut off");
  sock.resume();  // drain what the kernel buffered, up to the server's close
  await closed;
  console.log("slow client: cut off, others served");
}

// Connections beyond --max-connections get 503 and are closed.
{
  const idle = [];
  for (let i = 0; i < MAX_CONN; ++i) {
    const s = net.connect(srv.port, "127.0.0.1");
    await new Promise((r) => s.on("connect", r));
    idle.push(s);
  }
  // Let the server accept them all before the next one knocks.
  await new Promise((r) => setTimeout(r, 200));
  const r = await rawRequest(srv.port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  assert.equal(r.status, 503, `over the connection limit: ${r.text.slice(0, 120)}`);
  for (const s of idle) s.destroy();
  await new Promise((r) => setTimeout(r, 200));
  assert.equal((await fetch(`${srv.base}/health`)).status, 200);
  console.log("connection limit: 503");
}

// SIGTERM while a stream is in flight: the stream ends with an error event, the server exits 0.
{
  const sock = net.connect(srv.port, "127.0.0.1");
  await new Promise((r) => sock.on("connect", r));
  sock.write(post(chat, { messages: msgs, stream: true, max_tokens: 1000000, ignore_eos: true }));
  let got = "";
  const ended = new Promise((resolve) => sock.on("close", resolve));
  await new Promise((resolve) => sock.on("data", (d) => { got += d; if ((got.match(/data: /g) || []).length > 3) resolve(); }));
  await srv.stop();
  await ended;
  assert.match(got, /shutting/, "the stream did not report the shutdown");
  assert.match(got, /0\r\n\r\n$/, "the chunked stream was not terminated");
  console.log("SIGTERM mid-stream: stream ended, exit 0");
}
