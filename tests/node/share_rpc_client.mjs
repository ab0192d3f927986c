// npm capnweb's own client against a share RPC endpoint, as opencode's share client calls it:
//
//   node share_rpc_client.mjs URL batch|ws SESSION_ID [KEY]
//
// Creates a share with initial data (createShare(sessionID, initialData)), syncs more data,
// creates a second share and syncs it pipelined in the same round trip, checks that a wrong
// secret throws, deletes the second share; prints one JSON object with every answer.

import { WebSocket } from "ws";
import { newHttpBatchRpcSession, newWebSocketRpcSession } from "capnweb";

globalThis.WebSocket ??= WebSocket;

const [url, mode, sessionID, key] = process.argv.slice(2);
const headers = key ? { "x-opencode-share-key": key } : {};

let socket;
function connect() {
  if (mode === "batch") {
    // An HTTP batch session ends with its first batch: one per round trip.
    return newHttpBatchRpcSession(new Request(`${url}/rpc/share`, { headers }));
  }
  if (!socket) {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}/rpc/share`, { headers });
    socket = newWebSocketRpcSession(ws);
  }
  return socket;
}

async function thrown(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return { name: err.name, message: err.message };
  }
}

const initial = [
  { type: "session", data: { id: sessionID, title: "from node", time: { created: 1 } } },
  { type: "message", data: { id: "msg_1", sessionID, role: "user", tags: ["date", 5], empty: [] } },
  { type: "session_diff", data: [{ file: "a.txt", additions: 1 }] },
];

const out = {};
try {
  out.created = await connect().createShare(sessionID, initial);
  out.synced = await connect().syncShare(out.created.id, out.created.secret, [
    { type: "part", data: { id: "prt_1", messageID: "msg_1", sessionID, text: "héllo ✓" } },
  ]);

  // Pipelined: the sync names the create's result before it exists; one round trip.
  const api = connect();
  const second = api.createShare(`${sessionID}-2`);
  const secondSync = api.syncShare(second.id, second.secret, [
    { type: "session", data: { id: `${sessionID}-2`, title: "pipelined" } },
  ]);
  [out.second, out.secondSynced] = await Promise.all([second, secondSync]);

  out.wrongSecret = await thrown(connect().syncShare(out.created.id, "wrong", []));
  out.deleted = await connect().deleteShare(out.second.id, out.second.secret);
  out.afterDelete = await thrown(connect().syncShare(out.second.id, out.second.secret, []));
} catch (err) {
  out.error = { name: err.name, message: err.message };
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
