// opencode's real share server, as syncd meets it: the semantics of its Hono routes over
// core/share.ts (read off its source; CONTRACTS.md section 2), with in-memory storage, for
// REST and for capnweb (methods wrapping the same functions, as the forks that add capnweb do).
//
//   - create derives the share id from the session id (its last 8 characters) and throws
//     "Share already exists: ID" when it exists;
//   - sync and delete answer {} (capnweb: undefined); an unknown share or a wrong secret
//     throws "Share not found: ID" / "Share secret invalid: ID";
//   - every thrown error is Hono's bare 500 text/plain "Internal Server Error" over REST;
//   - a malformed body is a 400 with {data, error: [issues], success: false};
//   - GET /api/share/:id/data answers the merged items, [] for an unknown share;
//   - share urls are {x-forwarded-proto or https}://{x-forwarded-host or host}/share/{id}.
//
// Test hooks under /test/: GET state (every share with its items and secret), POST
// remove/:id (the share is lost), POST fail/on|off (every /api and /rpc request answers 500
// until off: a passing outage), POST fail-sync/N (the next N syncs throw a storage error while
// everything else answers), POST drop-create-answer (the next create is applied and its
// connection destroyed before the answer).
//
//   node opencode_share_server.mjs      prints {"port": N} once listening on 127.0.0.1

import http from "node:http";
import { randomUUID } from "node:crypto";
import { WebSocket, WebSocketServer } from "ws";
import { RpcSession, RpcTarget, WebSocketTransport, nodeHttpBatchRpcResponse } from "capnweb";

globalThis.WebSocket ??= WebSocket;

const shares = new Map(); // id -> {secret, sessionID, items: Map(key -> item)}
const hooks = { failing: false, dropCreateAnswer: false, creates: 0, syncFailures: 0 };

function itemKey(item) {
  if (item.type === "session") return "session";
  if (item.type === "message") return `message/${item.data.id}`;
  if (item.type === "part") return `part/${item.data.messageID}/${item.data.id}`;
  return item.type; // session_diff, model: replaced whole by the newest
}

function create(sessionID, base) {
  const id = sessionID.slice(-8);
  if (shares.has(id)) throw new Error(`Share already exists: ${id}`);
  const share = { secret: randomUUID(), sessionID, items: new Map() };
  shares.set(id, share);
  hooks.creates += 1;
  return { id, secret: share.secret, url: `${base}/share/${id}` };
}

function get(id, secret) {
  const share = shares.get(id);
  if (!share) throw new Error(`Share not found: ${id}`);
  if (share.secret !== secret) throw new Error(`Share secret invalid: ${id}`);
  return share;
}

function sync(id, secret, data) {
  if (hooks.syncFailures > 0) {
    // A passing storage failure inside sync (a bucket write that fails) while reads and
    // everything else answer: thrown like any other error.
    hooks.syncFailures -= 1;
    throw new Error("Storage write failed");
  }
  const share = get(id, secret);
  for (const item of data) share.items.set(itemKey(item), item);
}

function remove(id, secret) {
  get(id, secret);
  shares.delete(id);
}

class ShareRpc extends RpcTarget {
  constructor(base) {
    super();
    this.base = base;
  }
  createShare(sessionID) {
    return create(sessionID, this.base);
  }
  syncShare(shareID, secret, data) {
    sync(shareID, secret, data);
  }
  deleteShare(shareID, secret) {
    remove(shareID, secret);
  }
}

function baseOf(req) {
  const proto = req.headers["x-forwarded-proto"] || "https";
  const host = req.headers["x-forwarded-host"] || req.headers.host;
  return `${proto}://${host}`;
}

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

function send(res, status, value) {
  if (value === undefined) {
    res.writeHead(status, { "content-type": "text/plain; charset=UTF-8" });
    res.end("Internal Server Error");
    return;
  }
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
}

function invalid(data, issue) {
  return { data, error: [{ code: "invalid_type", path: [issue], message: "Required" }], success: false };
}

async function api(req, res) {
  const url = new URL(req.url, "http://x");
  const parts = url.pathname.split("/").filter(Boolean); // api share [id] [sync|data]
  const text = req.method === "GET" ? "" : await body(req);
  let json = null;
  if (req.method !== "GET") {
    try {
      json = JSON.parse(text);
    } catch {
      return send(res, 400, invalid(text, "body"));
    }
  }
  try {
    if (req.method === "POST" && parts.length === 2) {
      if (typeof json?.sessionID !== "string") return send(res, 400, invalid(json, "sessionID"));
      if (hooks.dropCreateAnswer) {
        hooks.dropCreateAnswer = false;
        create(json.sessionID, baseOf(req));
        req.socket.destroy();
        return;
      }
      return send(res, 200, create(json.sessionID, baseOf(req)));
    }
    if (req.method === "POST" && parts.length === 4 && parts[3] === "sync") {
      if (typeof json?.secret !== "string" || !Array.isArray(json?.data)) {
        return send(res, 400, invalid(json, "data"));
      }
      sync(decodeURIComponent(parts[2]), json.secret, json.data);
      return send(res, 200, {});
    }
    if (req.method === "DELETE" && parts.length === 3) {
      if (typeof json?.secret !== "string") return send(res, 400, invalid(json, "secret"));
      remove(decodeURIComponent(parts[2]), json.secret);
      return send(res, 200, {});
    }
    if (req.method === "GET" && parts.length === 4 && parts[3] === "data") {
      const share = shares.get(decodeURIComponent(parts[2]));
      return send(res, 200, share ? [...share.items.values()] : []);
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("404 Not Found");
  } catch {
    send(res, 500); // Hono's default for a thrown error
  }
}

function testHook(req, res) {
  const [, , action, arg] = new URL(req.url, "http://x").pathname.split("/");
  if (action === "state") {
    const out = {};
    for (const [id, share] of shares) {
      out[id] = { secret: share.secret, sessionID: share.sessionID, items: [...share.items.values()] };
    }
    return send(res, 200, { shares: out, creates: hooks.creates });
  }
  if (action === "remove") shares.delete(arg);
  else if (action === "fail") hooks.failing = arg === "on";
  else if (action === "drop-create-answer") hooks.dropCreateAnswer = true;
  else if (action === "fail-sync") hooks.syncFailures = Number(arg);
  send(res, 200, {});
}

const server = http.createServer(async (req, res) => {
  if (req.url.startsWith("/test/")) return testHook(req, res);
  if (hooks.failing) {
    await body(req);
    return send(res, 500);
  }
  if (req.url.startsWith("/api/share")) return api(req, res);
  if (req.url.startsWith("/rpc/share")) {
    try {
      await nodeHttpBatchRpcResponse(req, res, new ShareRpc(baseOf(req)));
    } catch (err) {
      res.writeHead(500).end(String(err));
    }
    return;
  }
  res.writeHead(404).end();
});

const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
server.on("upgrade", (req, socket, head) => {
  if (!req.url.startsWith("/rpc/share") || hooks.failing) {
    socket.end("HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    new RpcSession(new WebSocketTransport(ws), new ShareRpc(baseOf(req)));
  });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
