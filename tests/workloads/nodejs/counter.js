// A Node.js service holding its state in memory: a random token, a counter,
// a map that grows with each request, and a timer that ticks in the event loop.
"use strict";
const http = require("http");
const crypto = require("crypto");
const token = crypto.randomBytes(16).toString("hex");
const seen = new Map();
let counter = 0;
let ticks = 0;
setInterval(() => { ticks += 1; }, 100);
http.createServer((req, res) => {
  counter += 1;
  seen.set(counter, Date.now());
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ token, counter, ticks, pid: process.pid, entries: seen.size }) + "\n");
}).listen(7804, "127.0.0.1");
