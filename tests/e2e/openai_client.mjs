// The official `openai` npm client against `sinkserve serve`, unchanged but for its base URL.
//   node openai_client.mjs stream   : a streamed chat completion equals `sinkserve generate`
//   node openai_client.mjs session  : a 3-round session encodes only each new turn and equals
//                                     one `sinkserve chat` run of the same turns
import assert from "node:assert/strict";
import { loadOpenAI, startServer, metrics, runSinkserve, withDeadline, MODEL } from "./harness.mjs";

const OpenAI = loadOpenAI();
withDeadline(240);
const scenario = process.argv[2];
const srv = await startServer(["--sessions", "4"]);
const client = new OpenAI({ baseURL: `${srv.base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60000 });
const model = (await client.models.list()).data[0].id;
assert.equal(model, "stories260K");

if (scenario === "stream") {
  const prompt = "Once upon a time, there was a little dog";
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: prompt }],
    temperature: 0,
    seed: 7,
    max_tokens: 48,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let finish = null;
  let usage = null;
  let role = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      text += c.delta.content ?? "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(role, "assistant");
  assert.ok(finish === "stop" || finish === "length", `finish_reason ${finish}`);
  assert.ok(usage && usage.completion_tokens > 0 && usage.prompt_tokens > 0, JSON.stringify(usage));
  const ref = await runSinkserve(["generate", "--model", MODEL, "--prompt", prompt, "--temp", "0",
                                  "--seed", "7", "-n", "48", "--threads", "1"]);
  assert.equal(text, ref.replace(/\n$/, ""), "streamed text differs from sinkserve generate");
  console.log(`stream: ${usage.completion_tokens} tokens equal to generate: ${JSON.stringify(text.slice(0, 60))}...`);
} else if (scenario === "session") {
  const turns = ["Once upon a time, there was a cat.", "The cat was very hungry.", "Then it found a fish and"];
  const history = [];
  const replies = [];
  for (let round = 0; round < turns.length; ++round) {
    history.push({ role: "user", content: turns[round] });
    const before = await metrics(srv.base);
    const r = await client.chat.completions.create(
      { model, messages: history, temperature: 0, max_tokens: 24 },
      { headers: { "X-Session-Id": "e2e-session" } });
    const after = await metrics(srv.base);
    const content = r.choices[0].message.content;
    const encoded = after.get("sinkserve_prompt_tokens_total") - before.get("sinkserve_prompt_tokens_total");
    assert.equal(encoded, r.usage.prompt_tokens, `round ${round + 1}: metrics and usage disagree`);
    if (round > 0) {
      // Only the new turn was encoded: the session already held everything before it.
      const cached = r.usage.prompt_tokens_details.cached_tokens;
      assert.ok(cached > 0, `round ${round + 1}: nothing cached`);
      assert.ok(encoded < 20, `round ${round + 1}: encoded ${encoded} tokens, more than the new turn`);
      assert.ok(encoded < cached, `round ${round + 1}: encoded ${encoded} >= cached ${cached}`);
    }
    history.push({ role: "assistant", content });
    replies.push(content);
  }
  const sessions = await (await fetch(`${srv.base}/v1/sessions`)).json();
  assert.equal(sessions.data.length, 1);
  assert.equal(sessions.data[0].messages, 6);
  // The same turns through one `sinkserve chat` session.
  const out = await new Promise((resolve, reject) => {
    import("node:child_process").then(({ spawn }) => {
      const launch = JSON.parse(process.env.SINKSERVE_E2E_LAUNCH || "[]");
      const argv = [...launch, process.env.SINKSERVE_BINARY, "chat", "--model", MODEL, "--temp", "0",
                    "-n", "24", "--threads", "1", "--template", "raw"];
      const p = spawn(argv[0], argv.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
      let s = "";
      p.stdout.on("data", (d) => (s += d));
      p.on("exit", (code) => (code === 0 ? resolve(s) : reject(new Error(`sinkserve chat exited ${code}`))));
      p.stdin.end(turns.join("\n") + "\n");
    });
  });
  const chatReplies = out.split("USER: ").slice(1, 1 + turns.length)
    .map((part) => part.slice(part.indexOf("ASSISTANT: ") + "ASSISTANT: ".length).replace(/\n\n$/, ""));
  // `chat` does not print a reply's trailing whitespace.
  assert.deepEqual(replies.map((r) => r.trimEnd()), chatReplies, "session replies differ from sinkserve chat");
  console.log(`session: 3 rounds equal to sinkserve chat`);
} else {
  throw new Error(`unknown scenario '${scenario}'`);
}
await srv.stop();
