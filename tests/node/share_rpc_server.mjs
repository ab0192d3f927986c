// A reference share server for syncd's interop tests: npm capnweb's own HTTP batch and
// WebSocket server sides answering /rpc/share on 127.0.0.1 with the methods of opencode's
// ShareRpc (createShare, syncShare, deleteShare, errors thrown as Error("Share not found") /
// Error("Invalid secret")), plus test hooks: echo, fail, hang, stats, breakSockets.
//
//   node --expose-gc share_rpc_server.mjs     (env SHARE_RPC_KEY: require x-opencode-share-key)
// prints {"port": N} on its first stdout line once listening on an ephemeral port.

import http from "node:http";
import { randomUUID } from "node:crypto";
import { WebSocket, WebSocketServer } from "ws";
import { RpcSession, RpcTarget, WebSocketTransport, nodeHttpBatchRpcResponse } from "capnweb";

// Node 20 has no global WebSocket; capnweb's transport reads WebSocket.CONNECTING from it.
globalThis.WebSocket ??= WebSocket;

const key = process.env.SHARE_RPC_KEY || undefined;
const shares = new Map();
const stats = { requests: 0, unauthorized: 0, batches: [], sockets: 0 };
const sockets = new Set(); // {ws, session}

function applyData(share, data) {
  for (const item of data) {
    if (item.type === "session") share.session = item.data;
    else if (item.type === "message" || item.type === "part") {
      const list = item.type === "message" ? share.messages : share.parts;
      const at = list.findIndex((x) => x.id === item.data.id);
      if (at === -1) list.push(item.data);
      else list[at] = item.data;
    } else if (item.type === "session_diff") share.diffs.push(...item.data);
    else if (item.type === "model") {
      for (const model of item.data) {
        const at = share.models.findIndex((x) => x.id === model.id);
        if (at === -1) share.models.push(model);
        else share.models[at] = model;
      }
    }
  }
}

class ShareRpc extends RpcTarget {
  constructor(calls) {
    super();
    this.calls = calls; // method names called in this batch; null on a socket
  }

  createShare(sessionID, initialData) {
    this.calls?.push("createShare");
    const id = sessionID.slice(-8);
    const share = {
      secret: randomUUID(), sessionID, session: null, messages: [], parts: [], diffs: [],
      models: [], syncCount: 0,
    };
    if (initialData && initialData.length > 0) {
      applyData(share, initialData);
      share.syncCount = 1;
    }
    shares.set(id, share);
    return { id, secret: share.secret, url: `http://127.0.0.1/share/${id}` };
  }

  syncShare(shareID, secret, data) {
    this.calls?.push("syncShare");
    const share = shares.get(shareID);
    if (!share) throw new Error("Share not found");
    if (share.secret !== secret) throw new Error("Invalid secret");
    applyData(share, data);
    share.syncCount += 1;
    return { success: true, syncCount: share.syncCount };
  }

  deleteShare(shareID, secret) {
    this.calls?.push("deleteShare");
    const share = shares.get(shareID);
    if (!share) throw new Error("Share not found");
    if (share.secret !== secret) throw new Error("Invalid secret");
    shares.delete(shareID);
    return { success: true };
  }

  readShare(shareID) {
    const share = shares.get(shareID);
    if (!share) throw new Error("Share not found");
    const { secret, ...visible } = share;
    return visible;
  }

  echo(value) {
    this.calls?.push("echo");
    return value;
  }

  // Each argument's JavaScript type, as capnweb delivered it.
  types(...values) {
    return values.map((v) => {
      if (v === null) return "null";
      if (Array.isArray(v)) return "array";
      if (v instanceof Date) return "Date";
      if (v instanceof Uint8Array) return "Uint8Array";
      if (v instanceof Error) return v.constructor.name;
      return typeof v;
    });
  }

  fail(message, name) {
    const Kind = { TypeError, RangeError }[name] || Error;
    throw new Kind(message);
  }

  hang() {
    return new Promise(() => {});
  }

  stats() {
    globalThis.gc?.();
    return {
      requests: stats.requests,
      unauthorized: stats.unauthorized,
      batches: stats.batches,
      sockets: stats.sockets,
      open: [...sockets].map(({ session }) => session.getStats()),
      heapUsed: process.memoryUsage().heapUsed,
    };
  }

  // How the next test breaks every open socket: "abort" sends capnweb's abort message,
  // "close" closes cleanly, "terminate" drops the TCP connection, "pause" stops reading (so
  // pings go unanswered).
  breakSockets(how) {
    for (const { ws } of sockets) {
      if (how === "abort") ws.send(JSON.stringify(["abort", ["error", "Error", "test abort"]]));
      else if (how === "close") ws.close(1001, "going away");
      else if (how === "terminate") ws.terminate();
      else if (how === "pause") ws._socket.pause();
    }
    return sockets.size;
  }
}

function authorized(headers) {
  return key === undefined || headers["x-opencode-share-key"] === key;
}

const server = http.createServer(async (req, res) => {
  if (!req.url.startsWith("/rpc/share")) {
    res.writeHead(404).end();
    return;
  }
  if (!authorized(req.headers)) {
    stats.unauthorized += 1;
    res.writeHead(401, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "Unauthorized" }));
    return;
  }
  stats.requests += 1;
  const calls = [];
  stats.batches.push(calls);
  try {
    await nodeHttpBatchRpcResponse(req, res, new ShareRpc(calls));
  } catch (err) {
    res.writeHead(500).end(String(err));
  }
});

const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
server.on("upgrade", (req, socket, head) => {
  if (!req.url.startsWith("/rpc/share") || !authorized(req.headers)) {
    stats.unauthorized += 1;
    socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n' +
               'connection: close\r\n\r\n{"error":"Unauthorized"}');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    stats.sockets += 1;
    const session = new RpcSession(new WebSocketTransport(ws), new ShareRpc(null));
    const entry = { ws, session };
    sockets.add(entry);
    ws.on("close", () => sockets.delete(entry));
  });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
