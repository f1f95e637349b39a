// Sessions that survive (serve --session-dir), through the openai client, greedy throughout:
//   1. a session saved by POST /v1/sessions/{id}/save, the server then killed (SIGKILL: nothing
//      is saved at exit) and restarted on the same directory, continues with exactly the tokens
//      of an uninterrupted run, and its usage says it was restored;
//   2. with one slot, a session evicted by another is written to the directory and restored
//      transparently on its next turn, again equal to the uninterrupted run;
//   3. idle sessions are saved at shutdown (SIGTERM) and resume after a restart;
//   4. damaged, truncated and foreign (another window) files are refused with 422 naming the
//      file, never loaded, and the server serves on;
//   5. --session-dir-max keeps the directory within its bound, oldest saves removed first.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadOpenAI, startServer, withDeadline } from "./harness.mjs";

const OpenAI = loadOpenAI();
withDeadline(280);
const model = "stories260K";
const TURNS = ["Once upon a time, there was a cat.", "The cat was very hungry.", "Then it found a fish and",
               "The next day the sun came out."];
const WINDOW = ["--window", "60"];

const client = (srv) => new OpenAI({ baseURL: `${srv.base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60000 });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sinkserve-session-dir-"));
process.on("exit", () => fs.rmSync(tmp, { recursive: true, force: true }));

// Turns [from, to) of a conversation whose first `from` replies are `replies`; returns the replies
// (all so far) and the usage of each new turn.
async function turns(srv, session, replies, from, to) {
  const out = [...replies], usages = [];
  for (let k = from; k < to; ++k) {
    const messages = [];
    for (let i = 0; i <= k; ++i) {
      messages.push({ role: "user", content: TURNS[i] });
      if (i < k) messages.push({ role: "assistant", content: out[i] });
    }
    const r = await client(srv).chat.completions.create({ model, messages, temperature: 0, max_tokens: 24, session });
    out.push(r.choices[0].message.content);
    usages.push(r.usage);
  }
  return { replies: out, usages };
}

async function post(srv, p) {
  const r = await fetch(`${srv.base}${p}`, { method: "POST" });
  return { status: r.status, body: await r.json() };
}

// The uninterrupted run: 4 turns in one session of a server without a session directory.
const ref = await startServer([...WINDOW]);
const expected = (await turns(ref, "ref", [], 0, TURNS.length)).replies;
await ref.stop();

{  // 1. Save, SIGKILL, restart, continue.
  const dir = path.join(tmp, "saved");
  let srv = await startServer([...WINDOW, "--session-dir", dir]);
  const first = await turns(srv, "alpha", [], 0, 2);
  assert.deepEqual(first.replies, expected.slice(0, 2));
  const saved = await post(srv, "/v1/sessions/alpha/save");
  assert.equal(saved.status, 200, JSON.stringify(saved.body));
  assert.equal(saved.body.object, "session.saved");
  assert.ok(saved.body.bytes > 0 && saved.body.tokens > 4 + 60, JSON.stringify(saved.body));
  assert.equal((await post(srv, "/v1/sessions/nobody/save")).status, 404);
  process.kill(srv.pid, "SIGKILL");
  await srv.exited;
  srv = await startServer([...WINDOW, "--session-dir", dir]);
  assert.match(srv.log(), /sessions saved in .* \(1 there now/);
  const listed = (await (await fetch(`${srv.base}/v1/sessions`)).json()).data;
  assert.deepEqual(listed.map((x) => [x.id, x.on_disk, x.bytes]), [["alpha", true, saved.body.bytes]]);
  const rest = await turns(srv, "alpha", first.replies, 2, 4);
  assert.deepEqual(rest.replies, expected, "the restored session continued differently");
  assert.equal(rest.usages[0].session_restored, true);
  assert.equal(rest.usages[1].session_restored, undefined, "only the first turn after a restore says so");
  assert.ok(rest.usages[0].prompt_tokens_details.cached_tokens > 0);
  console.log(`saved at ${saved.body.tokens} tokens (${saved.body.bytes} bytes), killed, restarted: turns 3-4 equal`);
  await srv.stop();
}

{  // 2. Evicted to disk under slot pressure, restored transparently; 3. saved at shutdown.
  const dir = path.join(tmp, "evict");
  let srv = await startServer([...WINDOW, "--sessions", "1", "--session-dir", dir]);
  const a = await turns(srv, "a", [], 0, 1);
  const b = await turns(srv, "b", [], 0, 1);  // takes the only slot: "a" goes to disk
  assert.deepEqual(b.replies, expected.slice(0, 1));
  assert.ok(fs.readdirSync(dir).includes("a.session"), `a was not written: ${fs.readdirSync(dir)}`);
  const a2 = await turns(srv, "a", a.replies, 1, 2);  // "b" goes to disk, "a" comes back
  assert.equal(a2.usages[0].session_restored, true);
  assert.deepEqual(a2.replies, expected.slice(0, 2));
  await srv.stop();  // "a" is idle: saved at shutdown
  srv = await startServer([...WINDOW, "--sessions", "1", "--session-dir", dir]);
  const a3 = await turns(srv, "a", a2.replies, 2, 4);
  assert.deepEqual(a3.replies, expected, "the session saved at shutdown continued differently");
  const m = await (await fetch(`${srv.base}/metrics`)).text();
  assert.match(m, /sinkserve_sessions_restored_total 1\b/);
  console.log("evicted to disk and restored, saved at shutdown and resumed: equal to the uninterrupted run");
  await srv.stop();
}

{  // 4. Damaged, truncated and foreign files.
  const dir = path.join(tmp, "bad");
  let srv = await startServer([...WINDOW, "--session-dir", dir]);
  for (const id of ["flip", "cut", "foreign"]) await turns(srv, id, [], 0, 1);
  for (const id of ["flip", "cut", "foreign"]) assert.equal((await post(srv, `/v1/sessions/${id}/save`)).status, 200);
  await srv.stop();
  const bytes = fs.readFileSync(path.join(dir, "flip.session"));
  bytes[bytes.length >> 1] ^= 0x40;
  fs.writeFileSync(path.join(dir, "flip.session"), bytes);
  const cut = fs.readFileSync(path.join(dir, "cut.session"));
  fs.writeFileSync(path.join(dir, "cut.session"), cut.subarray(0, cut.length >> 1));
  srv = await startServer(["--window", "100", "--session-dir", dir]);
  const refused = async (id, pattern) => {
    try {
      await turns(srv, id, ["x"], 1, 2);
    } catch (e) {
      assert.equal(e.status, 422, `${id}: ${e.status} ${e.message}`);
      assert.match(e.message, new RegExp(`session '${id}' cannot be restored: .*${dir}/${id}.session`));
      assert.match(e.message, pattern);
      return;
    }
    assert.fail(`${id}: a bad session file was restored`);
  };
  await refused("flip", /checksum|CRC/i);
  await refused("cut", /truncated|length|short/i);
  await refused("foreign", /window/);
  const ok = await turns(srv, "fresh", [], 0, 1);
  assert.equal(ok.replies.length, 1);
  assert.equal((await fetch(`${srv.base}/v1/sessions/flip`, { method: "DELETE" })).status, 200, "DELETE removes the file");
  assert.ok(!fs.readdirSync(dir).includes("flip.session"));
  console.log("damaged, truncated and foreign session files refused with 422; the server serves on");
  await srv.stop();
}

{  // 5. The directory's bound.
  const dir = path.join(tmp, "bound");
  let srv = await startServer([...WINDOW, "--session-dir", dir]);
  await turns(srv, "one", [], 0, 1);
  const size = (await post(srv, "/v1/sessions/one/save")).body.bytes;
  await srv.stop();
  fs.rmSync(dir, { recursive: true });
  srv = await startServer([...WINDOW, "--session-dir", dir, "--session-dir-max", String(Math.floor(2.5 * size))]);
  for (const id of ["s1", "s2", "s3"]) {
    await turns(srv, id, [], 0, 1);
    assert.equal((await post(srv, `/v1/sessions/${id}/save`)).status, 200);
  }
  const left = fs.readdirSync(dir).sort();
  assert.deepEqual(left, ["s2.session", "s3.session"], `oldest first: ${left}`);
  console.log(`--session-dir-max ${Math.floor(2.5 * size)}: kept ${left}`);
  await srv.stop();
}
