// 32 concurrent clients x 5 rounds each, every client on its own session, half streaming: every
// response complete and well formed; after DELETE of every session, every slot is free.
import assert from "node:assert/strict";
import { chatTurn, loadOpenAI, startServer, metrics, waitMetrics, withDeadline } from "./harness.mjs";

const OpenAI = loadOpenAI();
withDeadline(280);
const CLIENTS = 32, ROUNDS = 5;
const srv = await startServer(["--sessions", String(CLIENTS)]);
const client = new OpenAI({ baseURL: `${srv.base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 120000 });
const model = "stories260K";
const words = ["cat", "dog", "bird", "tree", "ball", "boat", "sun", "cake"];

async function conversation(i) {
  const session = `client-${i}`;
  const history = [];
  for (let round = 0; round < ROUNDS; ++round) {
    history.push({ role: "user", content: `Once upon a time there was a ${words[(i + round) % words.length]}.` });
    const body = { model, messages: history, temperature: 0.8, top_p: 0.95, seed: i * 100 + round, max_tokens: 12 };
    const opts = { headers: { "X-Session-Id": session } };
    const { content, finish, usage } = await chatTurn(client, body, opts, i % 2 === 1);
    assert.ok(finish === "stop" || finish === "length", `client ${i} round ${round}: finish ${finish}`);
    assert.equal(typeof content, "string");
    assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens <= 12, JSON.stringify(usage));
    assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    if (round > 0) assert.ok(usage.prompt_tokens_details.cached_tokens > 0, `client ${i} round ${round}: no cache`);
    history.push({ role: "assistant", content });
  }
  return session;
}

const t0 = Date.now();
const sessions = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => conversation(i)));
const seconds = (Date.now() - t0) / 1000;
const listed = await (await fetch(`${srv.base}/v1/sessions`)).json();
assert.equal(listed.data.length, CLIENTS);
for (const s of listed.data) assert.equal(s.messages, 2 * ROUNDS, `session ${s.id}`);
let m = await metrics(srv.base);
assert.equal(m.get("sinkserve_free_slots"), 0);
assert.equal(m.get('sinkserve_generations_total{outcome="rejected_no_slot"}'), 0);
for (const id of sessions) {
  const r = await fetch(`${srv.base}/v1/sessions/${id}`, { method: "DELETE" });
  assert.equal(r.status, 200, `DELETE ${id}`);
  assert.equal((await r.json()).deleted, true);
}
assert.equal((await fetch(`${srv.base}/v1/sessions/${sessions[0]}`, { method: "DELETE" })).status, 404);
m = await waitMetrics(srv.base, (x) => x.get("sinkserve_free_slots") === CLIENTS);
assert.equal(m.get("sinkserve_free_slots"), CLIENTS, "slots still held after deleting every session");
assert.equal(m.get("sinkserve_active_sessions"), 0);
assert.equal((await (await fetch(`${srv.base}/v1/sessions`)).json()).data.length, 0);
console.log(`concurrency: ${CLIENTS} clients x ${ROUNDS} rounds in ${seconds.toFixed(1)} s, all slots free after DELETE`);
await srv.stop();
