// Shared plumbing of the end-to-end tests: start `sinkserve serve` on a free port (under mpirun
// when the build says how), talk raw HTTP, read /metrics, and stop the server with SIGTERM to
// rank 0, asserting a clean exit. Only 127.0.0.1; every wait is bounded.
import { spawn, execFile } from "node:child_process";
import net from "node:net";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

export const SINKSERVE = process.env.SINKSERVE_BINARY;
export const FIXTURES = process.env.SINKSERVE_FIXTURES || process.env.SINKSERVE_E2E_DEFAULT_FIXTURES;
export const MODEL = `${FIXTURES}/models/stories260K.gguf`;
// JSON array of the launcher prefix, e.g. ["mpirun","--oversubscribe",...,"-np","2"]; [] = plain.
const LAUNCH = JSON.parse(process.env.SINKSERVE_E2E_LAUNCH || "[]");

export function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}

export function withDeadline(seconds) {
  const t = setTimeout(() => fail(`test did not finish within ${seconds} s`), seconds * 1000);
  t.unref();
}

// `launch` overrides the build's launcher prefix (tests/multinode runs ranks across hosts).
export async function startServer(extra = [], launch = LAUNCH) {
  const argv = [...launch, SINKSERVE, "serve", "--model", MODEL, "--port", "0", "--threads", "1", ...extra];
  const proc = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "inherit", "pipe"] });
  let log = "";
  let running = true;
  const exited = new Promise((resolve) => proc.on("exit", (code, sig) => {
    running = false;
    resolve({ code, sig });
  }));
  // A test that fails leaves no server behind to hold the test runner's output open.
  process.on("exit", () => {
    if (running) proc.kill("SIGTERM");
  });
  const ready = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`server did not start in 60 s:\n${log}`)), 60000);
    proc.stderr.on("data", (d) => {
      log += d;
      process.stderr.write(d);
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+) \(pid (\d+)\)/.exec(log);
      if (m) {
        clearTimeout(t);
        resolve({ port: Number(m[1]), pid: Number(m[2]) });
      }
    });
    exited.then(({ code }) => reject(new Error(`server exited (${code}) before listening:\n${log}`)));
  });
  const { port, pid } = await ready;
  const base = `http://127.0.0.1:${port}`;
  const admin = /admin \(\/health, \/metrics\) on http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
  return {
    port,
    base,
    pid,
    adminPort: admin ? Number(admin[1]) : null,
    launcherPid: proc.pid,
    exited,
    log: () => log,
    // SIGTERM to rank 0: it finishes in-flight work and releases the other ranks; all exit 0.
    async stop() {
      process.kill(pid, "SIGTERM");
      const t = setTimeout(() => fail("server did not exit within 30 s of SIGTERM"), 30000);
      const { code, sig } = await exited;
      clearTimeout(t);
      assert.equal(sig, null, `server killed by ${sig}`);
      assert.equal(code, 0, `server exit code ${code}`);
      assert.match(log, /serve: stopped/);
    },
  };
}

// name{labels} value lines of the Prometheus text, as a Map.
export async function metrics(base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

// Polls until pred(metrics) holds, for at most `seconds`.
export async function waitMetrics(base, pred, seconds = 10) {
  const end = Date.now() + seconds * 1000;
  let m;
  while (Date.now() < end) {
    m = await metrics(base);
    if (pred(m)) return m;
    await new Promise((r) => setTimeout(r, 20));
  }
  return m;
}

// The pids of every rank but rank 0 (children of the launcher); [] without mpirun.
export function otherRanks(srv) {
  return new Promise((resolve) => {
    execFile("ps", ["-o", "pid=", "--ppid", String(srv.launcherPid)], (err, stdout) => {
      resolve(err ? [] : stdout.split(/\s+/).filter(Boolean).map(Number).filter((p) => p !== srv.pid));
    });
  });
}

// Exit 77 (skipped) with the reason, for a test that needs what this build does not have.
export function skip(reason) {
  console.log(`SKIP: ${reason}`);
  process.exit(77);
}

// A keep-alive HTTP/1.1 connection, TCP_NODELAY, that sends each request in the pieces it is
// given (one write each, a tick apart: separate TCP segments) and reads Content-Length replies.
export class RawClient {
  constructor(port) {
    this.port = port;
    this.buf = Buffer.alloc(0);
    this.pending = null;
    this.closed = false;
  }
  async connect() {
    this.sock = net.connect(this.port, "127.0.0.1");
    this.sock.setNoDelay(true);
    await new Promise((resolve, reject) => {
      this.sock.once("connect", resolve);
      this.sock.once("error", reject);
    });
    this.sock.on("error", () => {});
    this.sock.on("data", (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.#complete();
    });
    this.sock.on("close", () => {
      this.closed = true;
      if (this.pending) this.pending.reject(new Error("connection closed before the reply"));
      this.pending = null;
    });
    return this;
  }
  #complete() {
    if (!this.pending) return;
    const head = this.buf.indexOf("\r\n\r\n");
    if (head < 0) return;
    const text = this.buf.subarray(0, head).toString();
    const len = Number(/content-length: (\d+)/i.exec(text)?.[1] ?? 0);
    if (this.buf.length < head + 4 + len) return;
    const body = this.buf.subarray(head + 4, head + 4 + len).toString();
    this.buf = this.buf.subarray(head + 4 + len);
    const p = this.pending;
    this.pending = null;
    p.resolve({ status: Number(text.split(" ")[1]), head: text, body });
  }
  request(pieces, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending = null;
        reject(new Error(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending = {
        resolve: (r) => { clearTimeout(t); resolve(r); },
        reject: (e) => { clearTimeout(t); reject(e); },
      };
      const send = (i) => {
        if (i >= pieces.length || this.closed) return;
        this.sock.write(pieces[i]);
        setImmediate(() => send(i + 1));
      };
      send(0);
    });
  }
  close() {
    this.sock.destroy();
  }
}

// A keep-alive POST as two pieces: headers, then body.
export function splitPost(path, body) {
  const b = JSON.stringify(body);
  return [`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${Buffer.byteLength(b)}\r\n\r\n`, b];
}

// One raw HTTP exchange on a fresh socket: the status code and the whole response text.
export function rawRequest(port, bytes, { timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    let data = "";
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no response within ${timeoutMs} ms to ${bytes.slice(0, 60)}`));
    }, timeoutMs);
    s.on("connect", () => s.write(bytes));
    s.on("data", (d) => {
      data += d;
      // Complete once the body announced by Content-Length is in.
      const head = data.indexOf("\r\n\r\n");
      const len = /content-length: (\d+)/i.exec(data);
      if (head >= 0 && len && data.length >= head + 4 + Number(len[1])) {
        clearTimeout(t);
        s.destroy();
        resolve({ status: Number(data.split(" ")[1]), text: data });
      }
    });
    s.on("error", (e) => {
      clearTimeout(t);
      reject(e);
    });
    s.on("end", () => {
      clearTimeout(t);
      resolve({ status: Number(data.split(" ")[1]), text: data });
    });
  });
}

export function post(path, body, headers = {}) {
  const b = typeof body === "string" ? body : JSON.stringify(body);
  const h = Object.entries({ "Content-Type": "application/json", "Content-Length": Buffer.byteLength(b), ...headers })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join("");
  return `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n${h}\r\n${b}`;
}

// Runs a sinkserve command to completion: its stdout.
export function runSinkserve(args, seconds = 120) {
  return new Promise((resolve, reject) => {
    const argv = [...LAUNCH, SINKSERVE, ...args];
    execFile(argv[0], argv.slice(1), { timeout: seconds * 1000, maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${args.join(" ")}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

// The official client, from NODE_PATH (ES module imports ignore NODE_PATH; require honours it).
// Exit 77 (skipped) when scripts/test has not installed it.
export function loadOpenAI() {
  try {
    return createRequire(import.meta.url)("openai").OpenAI;
  } catch (e) {
    console.log(`SKIP: the openai npm package is not installed (scripts/test installs it): ${e.message}`);
    process.exit(77);
  }
}

// One chat turn through the openai client, streamed (with usage) or not: its text, finish reason
// and usage, the response objects checked on the way.
export async function chatTurn(client, body, opts, stream) {
  let content = "", finish = null, usage = null;
  if (stream) {
    const chunks = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }, opts);
    for await (const chunk of chunks) {
      assert.equal(chunk.object, "chat.completion.chunk");
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        content += c.delta.content ?? "";
        finish = c.finish_reason ?? finish;
      }
    }
  } else {
    const r = await client.chat.completions.create(body, opts);
    assert.equal(r.object, "chat.completion");
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].message.role, "assistant");
    content = r.choices[0].message.content;
    finish = r.choices[0].finish_reason;
    usage = r.usage;
  }
  return { content, finish, usage };
}
