// reconnect.mjs runs the console page's script (static/app.js) in node, as
// pagetest.mjs does, to check how it reconnects after a close. Arguments: the
// page's directory (see pagetest.mjs), its query string, and a JSON list of
// how each WebSocket the page opens ends: [{"code": 1012, "opened": true}, ...].
// Timers are the test's: each one the page sets is fired at once and its
// delay recorded, so no time passes. It prints, as one JSON object, every
// WebSocket URL opened, every delay, the page after each close, and the end.
import path from "node:path";
import { pathToFileURL } from "node:url";

const [dir, query, closesJSON] = process.argv.slice(2);
const closes = JSON.parse(closesJSON);

class Element {
    constructor({ id, hidden, disabled }) {
        Object.assign(this, { id, hidden, disabled, readOnly: false, textContent: "", value: "", checked: true, title: "" });
        this.dataset = {};
    }
    addEventListener() {}
    setAttribute() {}
}
const elements = {};
for (const e of JSON.parse(process.env.PAGE_ELEMENTS)) elements[e.id] = new Element(e);

globalThis.window = globalThis;
globalThis.location = new URL("http://proxy.example/vnc_lite.html" + query);
globalThis.document = {
    body: { dataset: {} },
    title: "",
    fullscreenElement: null,
    documentElement: { requestFullscreen: async () => {} },
    getElementById(id) {
        if (!elements[id]) throw new Error("the page has no element #" + id);
        return elements[id];
    },
};
const sockets = [];
globalThis.WebSocket = class extends EventTarget {
    static CLOSED = 3;
    constructor(url) { super(); this.url = url; this.readyState = 0; sockets.push(this); }
};
const timers = [];
globalThis.setTimeout = (f, ms) => { timers.push({ f, ms }); return timers.length; };
globalThis.clearTimeout = () => {};

await import(pathToFileURL(path.join(dir, "vncgate", "app.js")).href);

const page = () => ({
    state: document.body.dataset.state, status: elements.status.textContent, message: elements.message.textContent,
    closeCode: document.body.dataset.closeCode || "", connects: document.body.dataset.connects || "0",
    reconnects: document.body.dataset.reconnects || "0",
});
const delays = [], steps = [];
for (const c of closes) {
    const ws = sockets.at(-1), rfb = globalThis.rfbs.at(-1);
    if (c.opened) {
        ws.readyState = 1;
        ws.dispatchEvent(new Event("open"));
        rfb.dispatchEvent(new Event("connect"));
    }
    ws.readyState = 3;
    ws.dispatchEvent(Object.assign(new Event("close"), { code: c.code, reason: c.reason || "" }));
    rfb.dispatchEvent(new Event("disconnect"));
    steps.push(page());
    const t = timers.shift();
    if (!t) break;
    delays.push(t.ms);
    t.f();
}
// The last socket, if the page opened one more, connects.
let last = null;
if (sockets.length > steps.length) {
    sockets.at(-1).readyState = 1;
    sockets.at(-1).dispatchEvent(new Event("open"));
    globalThis.rfbs.at(-1).dispatchEvent(new Event("connect"));
    last = page();
}
process.stdout.write(JSON.stringify({ urls: sockets.map((s) => s.url), delays, steps, last }) + "\n");
