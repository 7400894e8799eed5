// drain.mjs drives Debian's chromium (via playwright-core) through one
// console page that stays open across proxy restarts, for
// deploy/e2e/drain_test.go. It reads commands from stdin and answers each
// on stdout, one JSON object per line ({"ready": true} first).
//
// {"open": url}          opens the page, waits until it is connected and
//                        shows a picture, then records every state the page
//                        shows from then on.
// {"waitConnects": n}    waits until the page has connected n times in all
//                        and is connected, showing a picture.
// Answer: {"state", "status", "message", "closeCode", "connects",
//          "reconnects", "states": [...], "colours", "painted", "logs", "error"}
// "states" are the page states seen since the previous answer.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "vncgate-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1024, height: 768 },
    args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
});
process.stdout.write(JSON.stringify({ ready: true }) + "\n");

// picture is true once the console canvas shows the demo VM's picture:
// several colours, (nearly) all of it drawn. It runs in the page.
function picture() {
    const canvas = document.querySelector("canvas");
    if (document.body.dataset.state !== "connected" || !canvas || !canvas.width || !canvas.height) return false;
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const step = Math.max(1, Math.floor(data.length / 4 / 20000)) * 4;
    const seen = new Set();
    let painted = 0, total = 0;
    for (let i = 0; i < data.length; i += step, total++) {
        if (data[i + 3] > 0) painted++;
        if (seen.size < 64) seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
    return seen.size > 4 && painted / total > 0.95 && { colours: seen.size, painted: painted / total };
}

// recordStates keeps every data-state the page takes in window.vncgateStates.
function recordStates() {
    window.vncgateStates = [];
    new MutationObserver(() => window.vncgateStates.push(document.body.dataset.state))
        .observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
}

let page = null;
const logs = [];

async function report(extra) {
    const r = await page.evaluate(() => {
        const states = window.vncgateStates || [];
        window.vncgateStates = [];
        return {
            state: document.body.dataset.state,
            status: (document.getElementById("status").textContent || "").trim(),
            message: (document.getElementById("message").textContent || "").trim(),
            closeCode: document.body.dataset.closeCode || "",
            connects: Number(document.body.dataset.connects || 0),
            reconnects: Number(document.body.dataset.reconnects || 0),
            states,
        };
    });
    return { ...r, ...extra, logs: logs.splice(0) };
}

async function run(cmd) {
    const timeout = cmd.timeoutMs || 30000;
    if (cmd.open) {
        page = await context.newPage();
        page.on("console", (m) => logs.push(m.type() + ": " + m.text()));
        page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
        await page.goto(cmd.open, { timeout });
        const seen = await page.waitForFunction(picture, null, { timeout, polling: 100 });
        const pic = await seen.jsonValue();
        await page.evaluate(recordStates);
        return report(pic);
    }
    if (cmd.waitConnects) {
        await page.waitForFunction((n) => Number(document.body.dataset.connects || 0) >= n, cmd.waitConnects, { timeout, polling: 50 });
        const seen = await page.waitForFunction(picture, null, { timeout, polling: 100 });
        return report(await seen.jsonValue());
    }
    throw new Error("unknown command " + JSON.stringify(cmd));
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
    if (!line.trim()) continue;
    let result;
    try {
        result = await run(JSON.parse(line));
    } catch (e) {
        const error = String(e && e.message || e), before = logs.splice(0);
        result = page ? await report({}).catch(() => ({})) : {};
        result.error = error;
        result.logs = before.concat(result.logs || []);
    }
    process.stdout.write(JSON.stringify(result) + "\n");
}
await context.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
