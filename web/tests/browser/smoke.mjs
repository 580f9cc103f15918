// Browser smoke test of the dashboard against the demo server (not run by cargo).
// Usage: cargo run -p deployex-web --example demo -- 4711 $LOGDIR &
//        chromium --headless --no-sandbox --remote-debugging-port=9555 --user-data-dir=$(mktemp -d) about:blank &
//        node --experimental-websocket web/tests/browser/smoke.mjs http://127.0.0.1:4711 9555 $LOGDIR
// Headless Chromium smoke test of the dashboard over CDP (node --experimental-websocket).
import { spawn } from "node:child_process";
import fs from "node:fs";
const [,, base, cdpPort, logDir] = process.argv;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let target;
for (let i = 0; i < 100; i++) {
  try { const l = await (await fetch(`http://127.0.0.1:${cdpPort}/json/list`)).json(); target = l.find((t) => t.type === "page"); if (target) break; } catch (_) {}
  await sleep(200);
}
const ws = new WebSocket(target.webSocketDebuggerUrl);
await new Promise((r) => ws.addEventListener("open", r));
let id = 0; const pending = new Map(); const problems = [];
ws.addEventListener("message", (e) => {
  const m = JSON.parse(e.data);
  if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
  if (m.method === "Runtime.exceptionThrown") problems.push("exception: " + JSON.stringify(m.params.exceptionDetails).slice(0, 400));
  if (m.method === "Runtime.consoleAPICalled" && m.params.type === "error") problems.push("console.error: " + JSON.stringify(m.params.args).slice(0, 300));
  if (m.method === "Log.entryAdded" && m.params.entry.level === "error") problems.push("log: " + m.params.entry.text + " " + (m.params.entry.url || ""));
});
const cmd = (method, params = {}) => new Promise((r) => { const i = ++id; pending.set(i, r); ws.send(JSON.stringify({ id: i, method, params })); });
const ev = async (expr) => { const r = await cmd("Runtime.evaluate", { expression: expr, awaitPromise: true, returnByValue: true }); return r.result.result.value; };
const go = async (path) => { await cmd("Page.navigate", { url: base + path }); await sleep(1500); };
const check = (name, ok, detail) => { console.log((ok ? "PASS " : "FAIL ") + name + (detail !== undefined ? " :: " + JSON.stringify(detail) : "")); if (!ok) process.exitCode = 1; };
await cmd("Page.enable"); await cmd("Runtime.enable"); await cmd("Log.enable");

await go("/");
check("redirected to login", (await ev("location.pathname")) === "/login");
await ev(`document.querySelector('input[name=password]').value='s3cret-pass'; document.querySelector('form.login').submit(); 1`);
await sleep(1500);
check("dashboard after login", (await ev("location.pathname")) === "/");
const up1 = await ev(`document.querySelector('#deployex [data-f=uptime]').textContent`);
await sleep(2500);
const up2 = await ev(`document.querySelector('#deployex [data-f=uptime]').textContent`);
check("live uptime update", up1 !== up2, [up1, up2]);
check("deploying banner", (await ev(`document.querySelector('#deploying').hidden === false && document.querySelector('#deploying').textContent`)) || false);
await ev(`window.confirm = () => true; document.querySelector('[data-action=restart][data-instance="1"]').click(); 1`);
await sleep(800);
check("restart toast", /done/.test(await ev(`document.querySelector('#toast').textContent`)), await ev(`document.querySelector('#toast').textContent`));
await ev(`document.querySelector('[data-action=restart][data-instance="2"]').click(); 1`);
await sleep(800);
check("busy toast", /409/.test(await ev(`document.querySelector('#toast').textContent`)), await ev(`document.querySelector('#toast').textContent`));
await ev(`document.querySelector('[data-action=pin]').click(); 1`);
await sleep(800);
check("pin toast", /Pin 1\.0\.11: done/.test(await ev(`document.querySelector('#toast').textContent`)), await ev(`document.querySelector('#toast').textContent`));
await ev(`document.querySelector('[data-action=unghost]').click(); 1`);
await sleep(800);
check("unghost toast", /done/.test(await ev(`document.querySelector('#toast').textContent`)));

fs.writeFileSync(logDir + "/1-stdout.log", "\x1b[32mfirst\x1b[0m [info] hello\n");
await go("/instances/1/logs/stdout");
fs.appendFileSync(logDir + "/1-stdout.log", "10:00 [error] <img src=x onerror=window.pwned=1><script>window.pwned=2</script>\n");
await sleep(1500);
const last = await ev(`document.querySelector('#log').lastElementChild.textContent`);
check("followed line as text", last.includes("<script>window.pwned=2</script>"), last);
check("no injection", (await ev(`String(window.pwned) + document.querySelectorAll('#log img, #log script').length`)) === "undefined0");
check("error line coloured", await ev(`document.querySelector('#log').lastElementChild.classList.contains('lv-error')`));
check("ansi span", await ev(`!!document.querySelector('#log .c32')`));

await go("/debug/actors");
await sleep(1000);
check("actor tree", /instance-1/.test(await ev(`document.querySelector('#actors').textContent`)) && (await ev(`document.querySelectorAll('.msg.inflight').length`)) === 1);

await go("/instances/1/terminal");
await sleep(1500);
check("xterm loaded", await ev(`!!document.querySelector('.xterm')`), await ev(`document.querySelector('#term-status').textContent`));
await cmd("Input.insertText", { text: "echo hi$((40+2))" });
await cmd("Input.dispatchKeyEvent", { type: "keyDown", key: "Enter", code: "Enter", windowsVirtualKeyCode: 13, text: "\r" });
await cmd("Input.dispatchKeyEvent", { type: "keyUp", key: "Enter", code: "Enter", windowsVirtualKeyCode: 13 });
await sleep(1500);
const screen = await ev(`document.querySelector('.xterm-rows') ? document.querySelector('.xterm-rows').textContent : document.querySelector('.xterm').textContent`);
check("terminal echo", screen.includes("hi42"), screen.slice(0, 300));
const shot = await cmd("Page.captureScreenshot", { format: "png" });
fs.writeFileSync("/tmp/term.png", Buffer.from(shot.result.data, "base64"));
await go("/");
await sleep(1000);
const shot2 = await cmd("Page.captureScreenshot", { format: "png" });
fs.writeFileSync("/tmp/dash.png", Buffer.from(shot2.result.data, "base64"));
check("no JS errors", problems.filter((p) => !p.includes("409")).length === 0, problems);
ws.close();
