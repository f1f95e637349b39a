// scripts/demo's client against a 2-rank server: it streams MT-Bench turns in one session until the
// session has passed its window several times, and every turn's report shows the cache rows at
// most sink + window while the tokens grow.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer, withDeadline, FIXTURES } from "./harness.mjs";

withDeadline(200);
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const srv = await startServer(["--window", "60", "--sessions", "2"]);
const out = await new Promise((resolve, reject) =>
  execFile(path.join(repo, "scripts/demo-chat"),
           ["--url", srv.base, "--prompts", `${FIXTURES}/prompts/mt_bench.jsonl`, "--tokens", "400", "--max-tokens", "40"],
           { timeout: 150000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout))));
const reports = [...out.matchAll(/(\d+) tokens streamed, (\d+) cache rows held/g)].map((m) => [Number(m[1]), Number(m[2])]);
assert.ok(reports.length >= 2, `too few turns reported:\n${out}`);
for (let i = 0; i < reports.length; ++i) {
  const [tokens, rows] = reports[i];
  assert.equal(rows, Math.min(tokens, 4 + 60), `turn ${i + 1}: ${tokens} tokens, ${rows} rows`);
  if (i > 0) assert.ok(tokens > reports[i - 1][0], "the session's tokens did not grow");
}
assert.ok(reports.at(-1)[0] >= 400, `stopped at ${reports.at(-1)[0]} tokens`);
assert.match(out, /never held more than 64 rows/);
console.log(`demo-chat: ${reports.length} turns, ${reports.at(-1)[0]} tokens, rows ${reports.map((r) => r[1]).join(",")}`);
await srv.stop();
