// console.mjs drives Debian's chromium (via playwright-core) through console
// pages for deploy/e2e/novnc_test.go. It launches one browser, then reads
// jobs from stdin and answers each on stdout, one JSON object per line.
//
// Job:    {"url": "...", "page": "vncgate" | "novnc-lite", "expect": "connected" | "disconnected",
//          "typeKey": "a", "pointer": true, "ctrlAltDel": true, "paste": "text", "reconnect": true,
//          "framesAfter": 3, "screenshot": "/tmp/x.png", "timeoutMs": 20000,
//          "pictureTimeoutMs": 10000}
// Result: {"state", "status", "message", "closeCode", "canvas": {x, y, width, height},
//          "colours", "painted", "reconnected", "framesSeen", "viewOnly", "logs": [...], "error"}
//
// pointer moves the mouse over the canvas and clicks its right and middle
// buttons. framesAfter waits, after the actions, until the canvas has
// changed that many times: with noVNC asking for the next update only once
// one arrived, two changes mean the VNC server answered a request sent
// after the actions, so it has read whatever input the actions sent.
// viewOnly reports the page's view-only state: {flag, badge, disabled: {id: bool}}.
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

// canvasStats says how far the console canvas is drawn: distinct colours
// (up to 64) and the share of pixels painted (a canvas starts transparent;
// noVNC draws updates as they arrive), sampling about 20000 pixels. Given
// want, it returns false until both exceed it (for waitForFunction). It runs
// in the page, so it must not refer to anything outside itself.
function canvasStats(want) {
    const canvas = document.querySelector("canvas");
    let stats = { colours: 0, painted: 0 };
    if (canvas && canvas.width && canvas.height) {
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        const step = Math.max(1, Math.floor(data.length / 4 / 20000)) * 4;
        const seen = new Set();
        let painted = 0, total = 0;
        for (let i = 0; i < data.length; i += step, total++) {
            if (data[i + 3] > 0) painted++;
            if (seen.size < 64) seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
        }
        stats = { colours: seen.size, painted: painted / total };
    }
    if (!want) return stats;
    return stats.colours > want.colours && stats.painted > want.painted && stats;
}

// countCanvasChanges starts counting, in the page, how often the console
// canvas changes (window.vncgateChanges). It runs in the page.
function countCanvasChanges() {
    const hash = () => {
        const canvas = document.querySelector("canvas");
        if (!canvas || !canvas.width || !canvas.height) return 0;
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let h = 0;
        for (let i = 0; i < data.length; i += 4 * 3) h = (Math.imul(h, 31) + (data[i] << 16 | data[i + 1] << 8 | data[i + 2])) | 0;
        return h;
    };
    window.vncgateChanges = 0;
    let last = hash();
    setInterval(() => {
        const h = hash();
        if (h !== last) { window.vncgateChanges++; last = h; }
    }, 30);
}

async function runJob(job) {
    const timeout = job.timeoutMs || 20000;
    const page = await context.newPage();
    const result = { logs: [] };
    let shot = false;
    page.on("console", (m) => result.logs.push(m.type() + ": " + m.text()));
    page.on("pageerror", (e) => result.logs.push("pageerror: " + e.message));
    try {
        await page.goto(job.url, { timeout });
        if (job.page === "novnc-lite") {
            // noVNC's own vnc_lite.html: #status says "Connected ..." or "Disconnected ...".
            await page.waitForFunction(() => /connected/i.test(document.querySelector("#status")?.textContent || ""), null, { timeout });
            result.state = /disconnected/i.test(await page.textContent("#status")) ? "disconnected" : "connected";
        } else {
            await page.waitForFunction(() => ["connected", "disconnected"].includes(document.body.dataset.state), null, { timeout });
            result.state = await page.evaluate(() => document.body.dataset.state);
        }
        if (result.state === "connected" && job.expect === "connected") {
            // Wait for a picture: several colours, (nearly) the whole canvas drawn.
            await page.waitForFunction(canvasStats, { colours: 4, painted: 0.95 },
                { timeout: job.pictureTimeoutMs || 10000, polling: 100 })
                .catch(() => {}); // the Go side judges what was drawn
            Object.assign(result, await page.evaluate(canvasStats));
            const canvas = page.locator("canvas").first();
            result.canvas = await canvas.boundingBox();
            if (job.screenshot) {
                await page.screenshot({ path: job.screenshot }); // the picture, before the actions
                shot = true;
            }
            if (job.framesAfter) await page.evaluate(countCanvasChanges);
            if (job.typeKey) {
                await canvas.click();
                await page.keyboard.press(job.typeKey);
            }
            if (job.pointer) {
                const box = result.canvas;
                for (const [fx, fy] of [[0.2, 0.2], [0.5, 0.5], [0.8, 0.7]]) {
                    await page.mouse.move(box.x + fx * box.width, box.y + fy * box.height, { steps: 4 });
                }
                await page.mouse.down({ button: "right" });
                await page.mouse.up({ button: "right" });
                await page.mouse.down({ button: "middle" });
                await page.mouse.up({ button: "middle" });
            }
            if (job.ctrlAltDel) {
                await page.click("#ctrlaltdel");
            }
            if (job.paste) {
                await page.click("#paste-toggle");
                await page.fill("#clipboard", job.paste);
                await page.click("#paste-send");
            }
            if (job.framesAfter) {
                await page.waitForFunction((n) => window.vncgateChanges >= n, job.framesAfter, { timeout, polling: 50 });
                result.framesSeen = await page.evaluate(() => window.vncgateChanges);
            }
            if (job.reconnect) {
                const before = Number(await page.evaluate(() => document.body.dataset.connects));
                await page.click("#reconnect");
                await page.waitForFunction((n) => Number(document.body.dataset.connects) > n, before, { timeout });
                result.reconnected = true;
            }
        }
        if (job.expect === "disconnected" && result.state !== "disconnected") {
            await page.waitForFunction(() => document.body.dataset.state === "disconnected", null, { timeout });
            result.state = "disconnected";
        }
        result.status = ((await page.textContent("#status")) || "").trim();
        result.message = ((await page.locator("#message").count()) ? (await page.textContent("#message")) || "" : "").trim();
        result.closeCode = await page.evaluate(() => document.body.dataset.closeCode || "");
        if (job.page !== "novnc-lite") {
            result.viewOnly = await page.evaluate(() => {
                const badge = document.getElementById("viewonly");
                const disabled = {};
                for (const id of ["ctrlaltdel", "paste-toggle", "paste-send"]) disabled[id] = document.getElementById(id).disabled;
                return { flag: document.body.dataset.viewOnly || "", badge: badge && !badge.hidden ? badge.textContent : "", disabled };
            });
        }
        if (job.screenshot && !shot) {
            await page.screenshot({ path: job.screenshot });
        }
        // Let queued WebSocket messages (typed keys) leave before the page closes.
        await page.waitForTimeout(job.settleMs ?? 300);
    } catch (e) {
        result.error = String(e && e.message || e);
        if (job.screenshot) await page.screenshot({ path: job.screenshot }).catch(() => {});
    } finally {
        await page.close().catch(() => {});
    }
    return result;
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
    if (!line.trim()) continue;
    let result;
    try {
        result = await runJob(JSON.parse(line));
    } catch (e) {
        result = { error: String(e) };
    }
    process.stdout.write(JSON.stringify(result) + "\n");
}
await context.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
