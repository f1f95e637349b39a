// Contexts that fill up, prompts that are too long and a slot pool larger than memory, through
// the openai client. A dense slot
// that fills ends its reply by length, a prompt that cannot fit (or passes --max-prompt-tokens)
// gets 400, "truncate_prompt": "keep_recent" keeps it to the window; recompute really recomputes
// (equal to `sinkserve generate --policy recompute`) far past its window. Meanwhile another
// client streams on, and the server lives on to a clean exit.
import assert from "node:assert/strict";
import { loadOpenAI, startServer, runSinkserve, withDeadline, MODEL } from "./harness.mjs";

const OpenAI = loadOpenAI();
withDeadline(240);
const model = "stories260K";
const longPrompt = (n) => "the cat sat. ".repeat(n);

function clientOf(srv) {
  return new OpenAI({ baseURL: `${srv.base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60000 });
}

// Another client's stream, running while the test does its worst.
async function bystander(client) {
  const stream = await client.completions.create({ model, prompt: "The dog", max_tokens: 30, ignore_eos: true,
                                                   stream: true });
  let n = 0, finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      if (c.text) ++n;
      finish = c.finish_reason ?? finish;
    }
  }
  assert.equal(finish, "length", "the bystander's stream did not end normally");
  return n;
}

async function expect400(promise, pattern) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.status, 400, `${e.status}: ${e.message}`);
    assert.match(e.message, pattern);
    return e.message;
  }
  assert.fail("expected a 400");
}

{
  const srv = await startServer(["--policy", "dense", "--ctx", "256", "--sessions", "4", "--max-prompt-tokens", "1000"]);
  const client = clientOf(srv);
  const other = bystander(client);
  const whole = await client.completions.create({ model, prompt: "Once", max_tokens: 300, ignore_eos: true });
  assert.equal(whole.choices[0].finish_reason, "length");
  assert.equal(whole.usage.prompt_tokens + whole.usage.completion_tokens, 257, JSON.stringify(whole.usage));
  const stream = await client.completions.create({ model, prompt: "Once", max_tokens: 300, ignore_eos: true, stream: true });
  let finish = null;
  for await (const chunk of stream) for (const c of chunk.choices) finish = c.finish_reason ?? finish;
  assert.equal(finish, "length");
  console.log(`dense, full context: finish length after ${whole.usage.completion_tokens} tokens`);

  // A second server asking for a billion slots is refused at start-up, naming the numbers,
  // before it allocates them; this one serves on.
  const refused = await runSinkserve(["serve", "--model", MODEL, "--threads", "1", "--port", "0",
                                      "--sessions", "1000000000"], 60).then(() => null, (e) => e.message);
  assert.ok(refused, "serve --sessions 1000000000 started");
  assert.match(refused, /1000000000 slots x \d+ rows x \d+ layers need [\d.e+]+ GiB of KV memory.*but [\d.e+]+ GiB is available \(host MemAvailable/s);
  console.log("serve --sessions 1000000000: refused at start-up");

  let m = await expect400(client.completions.create({ model, prompt: longPrompt(100), max_tokens: 3 }), /cannot fit/);
  console.log(`dense, prompt over the context: 400 ${m}`);
  m = await expect400(client.completions.create({ model, prompt: longPrompt(200), max_tokens: 3 }),
                      /at most 1000 \(--max-prompt-tokens\)/);
  console.log(`prompt over --max-prompt-tokens: 400 ${m}`);
  const kept = await client.completions.create({ model, prompt: longPrompt(200), max_tokens: 3, truncate_prompt: "keep_recent" });
  assert.equal(kept.usage.prompt_tokens, 256);
  console.log("truncate_prompt keep_recent: kept 256 tokens");
  await expect400(client.completions.create({ model, prompt: "x", truncate_prompt: "middle" }), /keep_recent/);

  assert.ok((await other) > 0);
  assert.equal((await fetch(`${srv.base}/health`)).status, 200);
  await srv.stop();
}

{
  const srv = await startServer(["--policy", "recompute", "--window", "60", "--sessions", "4"]);
  const client = clientOf(srv);
  const other = bystander(client);
  const r = await client.completions.create({ model, prompt: "Once", max_tokens: 100, ignore_eos: true, temperature: 0 });
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 100);
  const ref = await runSinkserve(["generate", "--model", MODEL, "--threads", "1", "--policy", "recompute", "--window", "60", "-p", "Once", "-n", "100"]);
  // generate stops at the end-of-text token; the server was told to run past it.
  const expect = ref.replace(/\n$/, "");
  assert.ok(expect.length > 100, `reference too short: ${expect}`);
  assert.equal(r.choices[0].text.slice(0, expect.length), expect, "serve's recompute differs from generate's");
  assert.ok((await other) > 0);
  console.log(`recompute, window 60: ${r.usage.completion_tokens} tokens equal to generate's`);
  await srv.stop();
}

{
  // A sink-cache session streamed far past its window: /v1/sessions reports every token streamed,
  // and the cache rows stay at sink + window.
  const srv = await startServer(["--window", "60", "--sessions", "2"]);
  const client = clientOf(srv);
  const rows = [];
  let messages = [];
  for (let round = 0; round < 3; ++round) {
    messages.push({ role: "user", content: `Round ${round}: tell me about the cat.` });
    const r = await client.chat.completions.create({ model, messages, max_tokens: 50, ignore_eos: true, temperature: 0,
                                                      session: "long" });
    assert.equal(r.usage.completion_tokens, 50);
    messages.push({ role: "assistant", content: r.choices[0].message.content });
    const s = await (await fetch(`${srv.base}/v1/sessions/long`)).json();
    rows.push([s.tokens, s.cache_rows]);
    assert.equal(s.cache_rows, Math.min(s.tokens, 4 + 60), `round ${round}: ${JSON.stringify(s)}`);
  }
  assert.ok(rows[2][0] > 2 * (4 + 60), `the session streamed only ${rows[2][0]} tokens`);
  console.log(`sink session past its window: (tokens, cache rows) per round ${JSON.stringify(rows)}`);
  await srv.stop();
}
