// pagetest.mjs runs the console page's script (static/app.js) in node with
// just enough of a DOM and a stand-in for noVNC's RFB class, for
// web_test.go. Arguments: a directory laid out as the page's URLs
// (vncgate/app.js, vncgate/closecodes.js, novnc/core/rfb.js) and the page's
// query string; the environment variable PAGE_ELEMENTS lists the page's
// elements as [{"id", "hidden", "disabled"}] (read from vnc.html). It
// connects, then clicks every input control, normally and by force (as if
// the page had been edited), and prints what the page showed and what it
// asked noVNC to send, as one JSON object.
import path from "node:path";
import { pathToFileURL } from "node:url";

const [dir, query] = process.argv.slice(2);

class Element {
    constructor({ id, hidden, disabled }) {
        Object.assign(this, { id, hidden, disabled, readOnly: false, textContent: "", value: "", checked: true, title: "" });
        this.dataset = {};
        this.listeners = {};
    }
    addEventListener(type, f) { (this.listeners[type] ||= []).push(f); }
    setAttribute() {}
    // click is a user's click: nothing happens on a disabled control.
    click() { if (!this.disabled) this.forceClick(); }
    // forceClick runs the handlers anyway, as after enabling the control by hand.
    forceClick() { for (const f of this.listeners.click || []) f({ target: this }); }
    state() { return { hidden: this.hidden, disabled: this.disabled, readOnly: this.readOnly, text: this.textContent, title: this.title }; }
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
globalThis.WebSocket = class {
    constructor(url) { this.url = url; globalThis.opened = url; }
    addEventListener() {}
};

await import(pathToFileURL(path.join(dir, "vncgate", "app.js")).href);
const rfb = globalThis.rfbs.at(-1);
const before = { viewOnly: rfb.viewOnly };
rfb.dispatchEvent(new Event("connect"));
const connected = {};
for (const [id, e] of Object.entries(elements)) connected[id] = e.state();
const body = { ...document.body.dataset };

elements["paste-toggle"].click();
const pastePanelOpened = !elements.paste.hidden;
elements.clipboard.value = "typed into the page";
elements["paste-send"].click();
elements.ctrlaltdel.click();
const sentByClicks = [...rfb.sent];
elements["paste-toggle"].forceClick();
elements["paste-send"].forceClick();
elements.ctrlaltdel.forceClick();

process.stdout.write(JSON.stringify({
    websocket: globalThis.opened, viewOnly: rfb.viewOnly, viewOnlyAtConnect: before.viewOnly, body, elements: connected,
    pastePanelOpened, sentByClicks, sentByForce: rfb.sent.slice(sentByClicks.length),
}) + "\n");
