// Two ranks on two hosts (network namespaces linked through a shaped switch, see
// netns_cluster.sh) serve 16 concurrent sessions x 3 rounds through the openai client, half of
// them streamed: every response is complete, nothing is refused or lost, every session keeps its
// cache between rounds, and each session's text equals one rank on one host answering the same
// turns one at a time (greedy: tensor parallelism across hosts equals tp = 1). /metrics counts
// the collectives of the two ranks and none of one.
// SINKSERVE_MULTINODE_LAUNCH: the cluster's launcher prefix, a JSON array.
import assert from "node:assert/strict";
import { chatTurn, fail, loadOpenAI, metrics, startServer, withDeadline } from "../e2e/harness.mjs";

const OpenAI = loadOpenAI();
withDeadline(280);
const LAUNCH = JSON.parse(process.env.SINKSERVE_MULTINODE_LAUNCH || "null");
if (!Array.isArray(LAUNCH) || LAUNCH.length === 0) fail("SINKSERVE_MULTINODE_LAUNCH (the cluster's launcher) is not set");
const SESSIONS = 16, ROUNDS = 3, MAX_TOKENS = 16;
const model = "stories260K";
const names = ["Lily", "Tom", "Sue", "Max", "Anna", "Ben", "Mia", "Sam"];
const things = ["cat", "dog", "bird", "tree", "ball", "boat", "sun", "cake"];

function turn(i, round) {
  return `${names[i % names.length]} saw a ${things[(i + 3 * round) % things.length]} in the park.`;
}

// One session's rounds: the text of each answer.
async function conversation(client, i) {
  const session = `mn-${i}`;
  const history = [], texts = [];
  for (let round = 0; round < ROUNDS; ++round) {
    history.push({ role: "user", content: turn(i, round) });
    const body = { model, messages: history, temperature: 0, max_tokens: MAX_TOKENS };
    const opts = { headers: { "X-Session-Id": session } };
    const where = `session ${i} round ${round}`;
    const { content, finish, usage } = await chatTurn(client, body, opts, i % 2 === 1);
    assert.ok(finish === "stop" || finish === "length", `${where}: finish ${finish}`);
    assert.ok(usage, `${where}: no usage`);
    assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens <= MAX_TOKENS, `${where}: ${JSON.stringify(usage)}`);
    if (finish === "length") assert.equal(usage.completion_tokens, MAX_TOKENS, `${where}: cut short`);
    if (round > 0) assert.ok(usage.prompt_tokens_details.cached_tokens > 0, `${where}: the session lost its cache`);
    history.push({ role: "assistant", content });
    texts.push(content);
  }
  return texts;
}

async function serve(launch, concurrent) {
  const srv = await startServer(["--sessions", String(SESSIONS)], launch);
  const client = new OpenAI({ baseURL: `${srv.base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 120000 });
  const t0 = Date.now();
  let texts;
  if (concurrent) {
    texts = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => conversation(client, i)));
  } else {
    texts = [];
    for (let i = 0; i < SESSIONS; ++i) texts.push(await conversation(client, i));
  }
  const seconds = (Date.now() - t0) / 1000;
  const listed = await (await fetch(`${srv.base}/v1/sessions`)).json();
  assert.equal(listed.data.length, SESSIONS, "sessions listed");
  for (const s of listed.data) assert.equal(s.messages, 2 * ROUNDS, `session ${s.id}: messages kept`);
  const m = await metrics(srv.base);
  const done = m.get('sinkserve_generations_total{outcome="stop"}') + m.get('sinkserve_generations_total{outcome="length"}');
  assert.equal(done, SESSIONS * ROUNDS, "generations completed");
  for (const outcome of ["cancelled", "shutdown", "rejected_bad_request", "rejected_no_slot", "rejected_session_busy"])
    assert.equal(m.get(`sinkserve_generations_total{outcome="${outcome}"}`), 0, `outcome ${outcome}`);
  assert.equal(m.get("sinkserve_sessions_evicted_total"), 0, "sessions evicted");
  const ranks = Number(/(\d+) rank\(s\)/.exec(srv.log())?.[1]);
  await srv.stop();
  return { texts, seconds, ranks, m };
}

// The collectives' counters of /metrics: every fed token's rows cross the ranks twice per layer
// (the attention and FFN all-reduces, dim floats each); with one rank there is nothing to measure.
function checkCollectives(m, ranks) {
  const calls = m.get("sinkserve_collective_calls_total"), bytes = m.get("sinkserve_collective_bytes_total");
  const coll_s = m.get("sinkserve_collective_seconds_total"), step_s = m.get("sinkserve_step_seconds_total");
  assert.equal(m.get("sinkserve_tp_ranks"), ranks, "sinkserve_tp_ranks");
  if (ranks === 1) {
    assert.equal(calls, 0, "collectives of one rank");
    assert.equal(bytes, 0, "collective bytes of one rank");
    return;
  }
  const LAYERS = 5, DIM = 64;  // stories260K
  const least = m.get("sinkserve_prompt_tokens_total") * LAYERS * 2 * DIM * 4;
  assert.ok(bytes >= least, `collective bytes ${bytes} < ${least}, the prompt tokens' all-reduces alone`);
  assert.ok(calls >= 2 * LAYERS * m.get("sinkserve_steps_total"), `${calls} collectives: fewer than two per layer per step`);
  assert.ok(coll_s > 0 && coll_s < step_s, `collectives ${coll_s} s of ${step_s} s in steps`);
}

const across = await serve(LAUNCH, true);
assert.equal(across.ranks, 2, "ranks of the cluster's server");
checkCollectives(across.m, 2);
const single = await serve([], false);
assert.equal(single.ranks, 1, "ranks of the reference server");
checkCollectives(single.m, 1);
let words = 0;
for (let i = 0; i < SESSIONS; ++i)
  for (let round = 0; round < ROUNDS; ++round) {
    assert.equal(across.texts[i][round], single.texts[i][round],
                 `session ${i} round ${round}: tp = 2 across hosts differs from tp = 1`);
    words += across.texts[i][round].split(/\s+/).filter(Boolean).length;
  }
const share = across.m.get("sinkserve_collective_seconds_total") / across.m.get("sinkserve_step_seconds_total");
console.log(`multinode sessions: ${SESSIONS} sessions x ${ROUNDS} rounds on 2 ranks across 2 hosts in ` +
            `${across.seconds.toFixed(1)} s, every answer complete and equal to tp = 1 (${words} words); ` +
            `collectives ${(100 * share).toFixed(1)}% of step time`);
