// vncgate console page: noVNC's RFB class, plus the one thing Nova's page
// never did: saying why a console failed. The proxy closes the WebSocket
// with a code from its table (closecodes.js is generated from it); this page
// turns the code into a sentence.
//
// A view-only console's URL carries view_only=1: the page then says "View
// only", sends no input (noVNC's viewOnly) and offers no keyboard, clipboard
// or Ctrl-Alt-Del. That is for the user's sake only: the proxy drops a
// view-only session's input whatever this page sends.
import RFB from "../novnc/core/rfb.js";
import { closeMessages } from "./closecodes.js";

const $ = (id) => document.getElementById(id);
const statusEl = $("status");
const messageEl = $("message");

// The token comes from ?path=%3Ftoken%3D… (Nova's URL for noVNC >= 1.1) or
// from ?token=… (older Nova URLs).
function tokenFromURL() {
    const params = new URLSearchParams(location.search);
    const path = params.get("path");
    if (path) {
        const q = path.includes("?") ? path.slice(path.indexOf("?") + 1) : path;
        const t = new URLSearchParams(q).get("token");
        if (t) return t;
    }
    return params.get("token") || "";
}

// Same host and path prefix as the page, ws or wss by the page's scheme.
function webSocketURL(token) {
    const u = new URL("websockify", location.href);
    u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    u.search = "?token=" + encodeURIComponent(token);
    u.hash = "";
    return u.href;
}

// viewOnlyFromURL reads view_only=1 (or true, yes, on), which consoleauth
// puts beside `path` in a view-only console's URL.
function viewOnlyFromURL() {
    const v = (new URLSearchParams(location.search).get("view_only") || "").toLowerCase();
    return ["1", "true", "yes", "on"].includes(v);
}

const viewOnly = viewOnlyFromURL();

function setState(state, text) {
    document.body.dataset.state = state;
    statusEl.textContent = text;
    $("ctrlaltdel").disabled = viewOnly || state !== "connected";
    $("paste-send").disabled = viewOnly || state !== "connected";
    $("reconnect").disabled = state === "connecting";
}

if (viewOnly) {
    document.body.dataset.viewOnly = "true";
    $("viewonly").hidden = false;
    $("paste").hidden = true;
    $("paste-toggle").disabled = true;
    $("clipboard").readOnly = true;
    for (const id of ["ctrlaltdel", "paste-toggle", "paste-send"]) {
        $(id).title = "Not available: this console is view only";
    }
}

function showMessage(text) {
    messageEl.textContent = text;
    messageEl.hidden = !text;
}

// explain turns how the WebSocket closed into a sentence for the user.
function explain(close) {
    if (!close) return "The connection to the console was lost.";
    const sentence = closeMessages[close.code];
    if (sentence) {
        if (close.code === 1000 && close.reason) return sentence + " (" + close.reason + ")";
        if (close.code === 4410 && close.reason) return sentence + " Reason: " + close.reason + ".";
        return sentence;
    }
    if (close.code === 1006) {
        return close.opened
            ? "The connection to the console proxy was lost."
            : "The console proxy could not be reached or refused the connection.";
    }
    return "The console closed (code " + close.code + (close.reason ? ": " + close.reason : "") + ").";
}

let rfb = null;
let lastClose = null;
let desktopName = "";

// A proxy that restarts (a drain's deadline, a rolling upgrade) closes with
// 1012; the page then reconnects by itself with the same URL, which a load
// balancer sends to another replica. The token is still valid (tokens are
// multi-use within their TTL; a single-use one fails as usual). Waits
// before each try, 5 tries over about 10 s; during them a refused or lost
// connection (1006) is retried too, since the old replica may still be in
// the load balancer's rotation.
const restartCode = 1012;
const retryDelays = [200, 800, 1500, 2500, 5000];
let retries = 0;
let retryTimer = 0;

function retryable(c) {
    if (!c) return retries > 0;
    return c.code === restartCode || (retries > 0 && c.code === 1006);
}

function connect() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    const token = tokenFromURL();
    showMessage("");
    if (!token) {
        setState("disconnected", "Not connected");
        document.body.dataset.closeCode = "4401";
        showMessage("This page was opened without a console token. " + closeMessages[4401]);
        return;
    }
    if (retries > 0) setState("reconnecting", "Reconnecting…");
    else setState("connecting", "Connecting…");
    delete document.body.dataset.closeCode;
    lastClose = null;

    // We open the WebSocket ourselves (no subprotocol, like noVNC >= 1.2)
    // so that we can read its close code, which noVNC does not pass on.
    const ws = new WebSocket(webSocketURL(token));
    const close = { code: 0, reason: "", opened: false };
    ws.addEventListener("open", () => { close.opened = true; });
    ws.addEventListener("close", (e) => {
        close.code = e.code;
        close.reason = e.reason;
        lastClose = close;
    });

    rfb = new RFB($("screen"), ws, { shared: true });
    rfb.viewOnly = viewOnly;
    rfb.scaleViewport = $("scale").checked;
    rfb.addEventListener("connect", () => {
        // Counts connections (tests wait on it after Reconnect).
        document.body.dataset.connects = String(Number(document.body.dataset.connects || 0) + 1);
        retries = 0;
        setState("connected", desktopName ? "Connected to " + desktopName : "Connected");
        rfb.focus();
    });
    rfb.addEventListener("desktopname", (e) => {
        desktopName = e.detail.name;
        document.title = desktopName + " – console";
        if (document.body.dataset.state === "connected") statusEl.textContent = "Connected to " + desktopName;
    });
    rfb.addEventListener("disconnect", () => {
        rfb = null;
        const explainClose = () => {
            const c = lastClose;
            if (c) document.body.dataset.closeCode = String(c.code);
            if (retryable(c) && retries < retryDelays.length) {
                document.body.dataset.reconnects = String(Number(document.body.dataset.reconnects || 0) + 1);
                setState("reconnecting", "Reconnecting…");
                retryTimer = setTimeout(connect, retryDelays[retries++]);
                return;
            }
            retries = 0;
            setState("disconnected", "Disconnected");
            showMessage(explain(c));
        };
        // noVNC reports a failure it read in RFB (the proxy's "Unable to
        // negotiate security with server") at once, before the close frame
        // that says why arrives: wait for it.
        if (ws.readyState === WebSocket.CLOSED) explainClose();
        else ws.addEventListener("close", explainClose, { once: true });
    });
    rfb.addEventListener("securityfailure", (e) => {
        showMessage("The server refused the console: " + (e.detail.reason || "security negotiation failed") + ".");
    });
    rfb.addEventListener("credentialsrequired", () => {
        const password = window.prompt("The console asks for a password:");
        if (password === null) rfb.disconnect();
        else rfb.sendCredentials({ password });
    });
    rfb.addEventListener("clipboard", (e) => { $("clipboard").value = e.detail.text; });
}

$("ctrlaltdel").addEventListener("click", () => { if (rfb && !viewOnly) { rfb.sendCtrlAltDel(); rfb.focus(); } });
$("scale").addEventListener("change", (e) => { if (rfb) rfb.scaleViewport = e.target.checked; });
$("fullscreen").addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen().catch(() => showMessage("This browser refused full screen."));
});
$("paste-toggle").addEventListener("click", (e) => {
    if (viewOnly) return;
    const panel = $("paste");
    panel.hidden = !panel.hidden;
    e.target.setAttribute("aria-expanded", String(!panel.hidden));
});
$("paste-send").addEventListener("click", () => {
    if (rfb && !viewOnly) { rfb.clipboardPasteFrom($("clipboard").value); rfb.focus(); }
});
$("reconnect").addEventListener("click", () => {
    retries = 0;
    if (rfb) {
        const old = rfb;
        rfb = null;
        old.addEventListener("disconnect", () => setTimeout(connect, 0));
        old.disconnect();
        return;
    }
    connect();
});

connect();
