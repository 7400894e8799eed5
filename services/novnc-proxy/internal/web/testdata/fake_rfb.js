// A stand-in for noVNC's RFB class (core/rfb.js) for pagetest.mjs: it
// records what the page sets and asks it to send.
export default class RFB extends EventTarget {
    constructor(target, ws, options) {
        super();
        this.options = options;
        this.viewOnly = false;
        this.scaleViewport = false;
        this.sent = [];
        (globalThis.rfbs ||= []).push(this);
    }
    sendCtrlAltDel() { this.sent.push("ctrl-alt-del"); }
    clipboardPasteFrom(text) { this.sent.push("paste: " + text); }
    focus() {}
    disconnect() {}
}
