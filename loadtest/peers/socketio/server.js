// The peer Switchboard is compared with: what users would otherwise pick.
// Socket.IO 4 (WebSocket transport only) with the Redis adapter, so every
// room broadcast also goes through Redis pub/sub exactly as it does in a
// multi-node Socket.IO deployment. Clients authenticate with the same HS256
// tokens as Switchboard (verified with jsonwebtoken in a middleware).
//
// Events, matching the loadtest's scenario shapes:
//   join(room, ack)      -> socket joins the room, ack(true)
//   publish(room, data)  -> "message"(data) to the room's other members
//   echo(data, ack)      -> ack(data)
//
// Env: PORT (default 18083), REDIS_URL, SB_AUTH__HS256_SECRET. Listens on
// 127.0.0.1 only.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const jwt = require("jsonwebtoken");

const port = Number(process.env.PORT || 18083);
const host = "127.0.0.1";
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const secret =
  process.env.SB_AUTH__HS256_SECRET || "switchboard-dev-secret-change-me";

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
  });
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    maxHttpBufferSize: 64 * 1024,
    adapter: createAdapter(pub, sub),
  });

  io.use((socket, next) => {
    const token = socket.handshake.auth && socket.handshake.auth.token;
    try {
      const claims = jwt.verify(token, secret, { algorithms: ["HS256"] });
      socket.data.user = claims.sub;
      socket.data.app = claims.app;
      next();
    } catch (_e) {
      next(new Error("unauthorized"));
    }
  });

  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      if (typeof room !== "string" || room.length > 64) return;
      socket.join(room);
      if (typeof ack === "function") ack(true);
    });
    socket.on("publish", (room, data) => {
      if (typeof room !== "string") return;
      socket.to(room).emit("message", data);
    });
    socket.on("echo", (data, ack) => {
      if (typeof ack === "function") ack(data);
    });
  });

  httpServer.listen(port, host, () => {
    console.error(`socket.io peer listening on ${host}:${port}, Redis ${redisUrl}`);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
