// Browser tests of the chat page: Debian's headless Chromium driven by playwright-core, two
// browser contexts as two users, against a real chat-server started by scripts/browser-test.sh.
//
// Environment (set by scripts/browser-test.sh):
//   CHAT_BASE_URL       the server's address, e.g. http://127.0.0.1:18090
//   CHAT_SERVER_BIN     the chat-server binary, to restart the server (with this process's env)
//   CHAT_SERVER_PIDFILE the file holding the server's pid (rewritten on restart)
//   CHAT_SERVER_LOG     where a restarted server logs
//   SCREENSHOT_DIR      where screenshots go
//   CHROMIUM            the browser (default /usr/bin/chromium)
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { chromium } from "playwright-core";

const BASE = required("CHAT_BASE_URL");
const SHOTS = process.env.SCREENSHOT_DIR || path.resolve("screenshots");
const PASSWORD = "correct horse battery";
const suffix = Math.random().toString(36).slice(2, 7);
const ALICE = "alice_" + suffix;
const BOB = "bob_" + suffix;

let browser;
let alice; // {context, page, dialogs, problems}
let bob;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run the tests with scripts/browser-test.sh`);
  return value;
}

// Polls `check` until it returns a truthy value, for at most `timeout` ms.
async function waitUntil(check, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function newUser(viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const user = { context, page, dialogs: [], problems: [] };
  page.on("dialog", (dialog) => {
    user.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on("pageerror", (err) => user.problems.push("page error: " + err.message));
  page.on("console", (msg) => {
    if (/Content Security Policy/i.test(msg.text())) user.problems.push("CSP: " + msg.text());
  });
  return user;
}

const status = (page, state) => page.locator(`#status[data-state="${state}"]`);
const bodies = (page) => page.locator("#messages .msg .body");
const bodiesExactly = (page, text) =>
  page.locator("#messages .msg .body").filter({ hasText: new RegExp(`^${escapeRegExp(text)}$`) });

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

async function send(page, text) {
  const box = page.getByLabel("Message", { exact: true });
  await box.fill(text);
  await box.press("Enter");
  await bodiesExactly(page, text).first().waitFor();
  // Shown from the stream, maybe before the post is answered: the next send waits for that.
  await page.getByRole("button", { name: "Send", exact: true }).waitFor();
}

async function openRoom(page, name) {
  await page.getByRole("button", { name: "Chat", exact: true }).click();
  const back = page.getByRole("button", { name: "← Conversations" });
  if (await back.isVisible()) await back.click();
  await page.locator("#room-list button", { hasText: "# " + name }).click();
  await page.locator("#conv-title", { hasText: "# " + name }).waitFor();
}

// The shown message whose body is exactly `text`.
const messageWith = (page, text) => page.locator("#messages .msg", {
  has: page.locator(".body", { hasText: new RegExp(`^${escapeRegExp(text)}$`) }),
});
const roomButton = (page, name) => page.locator("#room-list button", { hasText: "# " + name });
const dmButton = (page, name) => page.locator("#dm-list button", { hasText: name });
const typingLine = (page) => page.locator("#typing");

async function logIn(page, name) {
  await page.goto(BASE + "/");
  await page.getByLabel("Username", { exact: true }).fill(name);
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#me-name", { hasText: name }).waitFor();
  await status(page, "connected").waitFor();
}

async function openDm(page, name) {
  await page.getByLabel("Message a user by name").fill(name);
  await page.getByRole("button", { name: "Open", exact: true }).click();
  await page.locator("#conv-title", { hasText: name }).waitFor();
}

// The unread and mention badges of a sidebar button, as the page shows them ("" when none),
// read in one step (the sidebar is re-rendered as events come).
function badges(button) {
  return button.evaluate((b) => {
    const text = (selector) => b.querySelector(selector)?.firstChild.textContent ?? "";
    return { unread: text(".badge.unread"), mentions: text(".badge.mentions") };
  });
}

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, name), fullPage: false });
}

// ---------------------------------------------------------------- the server

function portOf() {
  const url = new URL(BASE);
  return Number(url.port);
}

function portOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => { socket.destroy(); resolve(true); });
    socket.once("error", () => resolve(false));
  });
}

function processGone(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return / Z /.test(stat.slice(stat.lastIndexOf(")")));
  } catch {
    return true;
  }
}

async function stopServer() {
  const pidfile = required("CHAT_SERVER_PIDFILE");
  const pid = Number(fs.readFileSync(pidfile, "utf8").trim());
  process.kill(pid, "SIGTERM");
  try {
    await waitUntil(() => processGone(pid), "the server to exit", 15000);
  } catch {
    process.kill(pid, "SIGKILL");
    await waitUntil(() => processGone(pid), "the killed server to exit", 5000);
  }
  await waitUntil(async () => !(await portOpen(portOf())), "the port to close", 5000);
}

async function startServer() {
  const log = fs.openSync(required("CHAT_SERVER_LOG"), "a");
  const child = spawn(required("CHAT_SERVER_BIN"), [], {
    env: process.env, detached: true, stdio: ["ignore", log, log],
  });
  child.unref();
  fs.writeFileSync(required("CHAT_SERVER_PIDFILE"), String(child.pid));
  await waitUntil(async () => {
    const res = await fetch(BASE + "/readyz").catch(() => null);
    return res && res.ok;
  }, "the restarted server to be ready", 60000);
}

// A TCP relay to the server: cut() drops every connection and, until restore(), closes new ones
// at once, or answers them with an HTTP error status.
async function startRelay(targetPort) {
  const sockets = new Set();
  let open = true;
  let answer = null;
  const relay = { refused: 0 };
  const server = net.createServer((client) => {
    if (!open) {
      relay.refused += 1;
      client.on("error", () => {});
      if (answer) {
        sockets.add(client);
        client.on("close", () => sockets.delete(client));
        client.write(`HTTP/1.1 ${answer} Unavailable\r\ncontent-type: application/json\r\n` +
          `content-length: 2\r\nconnection: close\r\n\r\n{}`, () => client.destroy());
      } else {
        client.destroy();
      }
      return;
    }
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(socket);
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return Object.assign(relay, {
    port: server.address().port,
    cut(options = {}) {
      open = false;
      answer = options.answer || null;
      relay.refused = 0;
      for (const socket of sockets) socket.destroy();
    },
    restore() {
      open = true;
    },
    close() {
      relay.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  });
}

async function apiLogin(username) {
  const res = await fetch(BASE + "/auth/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password: PASSWORD }),
  });
  assert.equal(res.status, 200);
  return (await res.json()).access_token;
}

async function apiPost(token, urlPath, body) {
  const res = await fetch(BASE + urlPath, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + token },
    body: JSON.stringify(body),
  });
  assert.ok(res.ok, `${urlPath}: ${res.status} ${await res.clone().text()}`);
  return res.json();
}

async function apiRequest(token, method, urlPath, body) {
  const res = await fetch(BASE + urlPath, {
    method,
    headers: { "content-type": "application/json", authorization: "Bearer " + token },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(res.ok, `${method} ${urlPath}: ${res.status} ${await res.clone().text()}`);
  return res.status === 204 ? null : res.json();
}

async function apiRegister(username) {
  const res = await fetch(BASE + "/auth/register", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password: PASSWORD }),
  });
  assert.equal(res.status, 201, await res.text());
  return apiLogin(username);
}

// A room of alice's that bob has joined, both through the API; bob's page lists it.
async function sharedRoom(name) {
  const aliceToken = await apiLogin(ALICE);
  const bobToken = await apiLogin(BOB);
  const room = await apiPost(aliceToken, "/rooms", { name });
  await apiPost(bobToken, `/rooms/${room.id}/join`, {});
  await roomButton(bob.page, name).waitFor();
  await roomButton(alice.page, name).waitFor();
  return { room, aliceToken, bobToken };
}

// ---------------------------------------------------------------- tests

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // Playwright gives every launch a fresh --user-data-dir of its own (it refuses one in args).
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-quic",
    ],
  });
  alice = await newUser();
  bob = await newUser();
});

after(async () => {
  await browser?.close();
});

test("register and log in through the page, log out and back in", async () => {
  for (const [user, name] of [[alice, ALICE], [bob, BOB]]) {
    const { page } = user;
    await page.goto(BASE + "/");
    await page.getByLabel("Username", { exact: true }).fill(name);
    await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
    await page.getByRole("button", { name: "Register" }).click();
    await page.locator("#me-name", { hasText: name }).waitFor();
    await status(page, "connected").waitFor();
    await page.locator("#conv-title", { hasText: "# general" }).waitFor();
  }
  const { page } = bob;
  // A logout the server does not take (its token would stay valid) leaves the session as it
  // is, and says so.
  await page.route("**/auth/logout", (route) => route.fulfill({
    status: 503, contentType: "application/json",
    body: JSON.stringify({ error: "database_unavailable", message: "the store is unavailable" }),
  }));
  await page.getByRole("button", { name: "Log out" }).click();
  await page.locator("#account-error", { hasText: "Not logged out" }).waitFor();
  await status(page, "connected").waitFor();
  assert.equal(await page.locator("#me-name").textContent(), BOB);
  await page.unroute("**/auth/logout");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();
  await status(page, "offline").waitFor();
  await page.getByLabel("Username", { exact: true }).fill(BOB);
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await page.getByLabel("Password", { exact: true }).press("Enter");
  await page.locator("#me-name", { hasText: BOB }).waitFor();
  await status(page, "connected").waitFor();
  // Each sees the other online.
  await alice.page.getByRole("button", { name: "Message " + BOB }).waitFor();
  await bob.page.getByRole("button", { name: "Message " + ALICE }).waitFor();
});

test("a message sent in general arrives live, once; Shift+Enter makes a new line", async () => {
  const text = "hello from alice " + suffix;
  await send(alice.page, text);
  await bodiesExactly(bob.page, text).waitFor();

  const box = alice.page.getByLabel("Message", { exact: true });
  await box.pressSequentially("line one");
  await box.press("Shift+Enter");
  await box.pressSequentially("line two");
  await box.press("Enter");
  await bodiesExactly(bob.page, "line one\nline two").waitFor();
  // Cleared once the post is answered, which may come after the others got it live.
  await alice.page.waitForFunction(() => document.getElementById("composer-input").value === "",
    null, { timeout: 10000 });
  // The sender got it twice (the POST response and the stream) and shows it once.
  assert.equal(await bodiesExactly(alice.page, text).count(), 1);
  assert.equal(await bodiesExactly(bob.page, text).count(), 1);
  await shot(alice.page, "desktop-general-alice.png");
});

test("a direct conversation: opened by name, appears for the other, answered from the online list", async () => {
  await alice.page.getByLabel("Message a user by name").fill(BOB);
  await alice.page.getByRole("button", { name: "Open", exact: true }).click();
  await alice.page.locator("#conv-title", { hasText: BOB }).waitFor();
  const psst = "psst, just between us " + suffix;
  await send(alice.page, psst);

  // It shows up in Bob's direct messages, with an unread badge, while he is in general.
  const entry = bob.page.locator("#dm-list button", { hasText: ALICE });
  await entry.locator(".badge", { hasText: "1" }).waitFor();
  assert.equal(await bodiesExactly(bob.page, psst).count(), 0);
  await shot(bob.page, "desktop-unread-bob.png");

  // He answers by picking Alice from the online list.
  await bob.page.getByRole("button", { name: "Message " + ALICE }).click();
  await bob.page.locator("#conv-title", { hasText: ALICE }).waitFor();
  await bodiesExactly(bob.page, psst).waitFor();
  const reply = "got it " + suffix;
  await send(bob.page, reply);
  await bodiesExactly(alice.page, reply).waitFor();
  await shot(bob.page, "desktop-direct-bob.png");

  // On another device (nothing stored in the browser), Alice's conversations come from the
  // server: Bob is listed.
  const other = await newUser();
  await other.page.goto(BASE + "/");
  await other.page.getByLabel("Username", { exact: true }).fill(ALICE);
  await other.page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await other.page.getByRole("button", { name: "Log in" }).click();
  await other.page.locator("#dm-list button", { hasText: BOB }).waitFor();
  assert.deepEqual(other.problems, []);
  await other.context.close();
});

test("HTML in a message is shown as text and never runs", async () => {
  await openRoom(alice.page, "general");
  await openRoom(bob.page, "general");
  const attack = "<img src=x onerror=alert(1)>";
  await send(alice.page, attack);
  await bodiesExactly(bob.page, attack).waitFor();
  for (const user of [alice, bob]) {
    assert.equal(await user.page.locator("#messages img").count(), 0);
    assert.equal(await user.page.locator("img").count(), 0);
    assert.equal(await bodiesExactly(user.page, attack).count(), 1);
  }
  // A dialog would have fired when the image failed to load; make sure the page had time to.
  await bob.page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0))));
  assert.deepEqual(alice.dialogs, []);
  assert.deepEqual(bob.dialogs, []);
});

test("history: a reload keeps the session; older messages load on scrolling up", async () => {
  const token = await apiLogin(ALICE);
  const room = await apiPost(token, "/rooms", { name: "hist-" + suffix });
  for (let i = 1; i <= 60; i++) {
    await apiPost(token, "/messages", { room_id: room.id, body: "history " + i });
  }
  const { page } = bob;
  await page.reload();
  await page.locator("#me-name", { hasText: BOB }).waitFor();
  await status(page, "connected").waitFor();
  await page.getByRole("button", { name: "Join room " + room.name }).click();
  await page.locator("#conv-title", { hasText: "# " + room.name }).waitFor();
  await bodiesExactly(page, "history 60").waitFor();
  assert.equal(await bodies(page).count(), 50);
  assert.equal(await bodiesExactly(page, "history 1").count(), 0);

  await page.locator("#scroller").evaluate((node) => { node.scrollTop = 0; });
  await bodiesExactly(page, "history 1").waitFor();
  assert.equal(await bodies(page).count(), 60);
  assert.equal(await bodies(page).first().textContent(), "history 1");
  assert.equal(await bodies(page).last().textContent(), "history 60");
  await page.locator("#history-note", { hasText: "beginning of the conversation" }).waitFor();
});

test("unread badges: a room bob is not looking at counts alice's messages and mentions of him; opening it clears them", async () => {
  const news = "news-" + suffix;
  const { room, bobToken } = await sharedRoom(news);
  await openRoom(bob.page, "general");
  await openRoom(alice.page, news);
  await send(alice.page, "first news " + suffix);
  const mention = `hey @${BOB.toUpperCase()}, look at this`;
  await send(alice.page, mention);

  const button = roomButton(bob.page, news);
  await waitUntil(async () => {
    const b = await badges(button);
    return b.unread === "2" && b.mentions === "@1";
  }, "bob's badges to say 2 unread, 1 mention");
  // The same counts come from the server after a reload (GET /rooms).
  await bob.page.reload();
  await status(bob.page, "connected").waitFor();
  await waitUntil(async () => {
    const b = await badges(button);
    return b.unread === "2" && b.mentions === "@1";
  }, "the badges after a reload");

  await openRoom(bob.page, news);
  await waitUntil(async () => {
    const b = await badges(button);
    return b.unread === "" && b.mentions === "";
  }, "the badges to clear");
  // The mention is highlighted: the name, and the whole message because it is bob.
  const mentioned = messageWith(bob.page, mention);
  assert.ok(await mentioned.evaluate((li) => li.classList.contains("mentions-me")));
  assert.equal(await mentioned.locator(".mention").textContent(), "@" + BOB.toUpperCase());
  assert.equal(await messageWith(bob.page, "first news " + suffix).evaluate((li) =>
    li.classList.contains("mentions-me")), false);
  // The page moved bob's read marker on the server.
  await waitUntil(async () => {
    const rooms = (await apiRequest(bobToken, "GET", "/rooms")).rooms;
    return rooms.find((r) => r.id === room.id).read_state.unread === 0;
  }, "the server to have bob's room read");
});

test("unread badges: a direct conversation with a mention, and 99+ from 100 messages", async () => {
  await openRoom(bob.page, "general");
  await openDm(alice.page, BOB);
  await send(alice.page, `@${BOB} are you there?`);
  const dm = dmButton(bob.page, ALICE);
  await waitUntil(async () => {
    const b = await badges(dm);
    return b.unread === "1" && b.mentions === "@1";
  }, "the direct conversation's badges");

  const busy = "busy-" + suffix;
  const { room, aliceToken } = await sharedRoom(busy);
  for (let i = 1; i <= 100; i++) {
    await apiPost(aliceToken, "/messages", { room_id: room.id, body: "busy " + i });
  }
  await waitUntil(async () => (await badges(roomButton(bob.page, busy))).unread === "99+",
    "the badge to say 99+");
  await bob.page.reload();
  await status(bob.page, "connected").waitFor();
  await waitUntil(async () => (await badges(roomButton(bob.page, busy))).unread === "99+",
    "the server's count to say 99+ after a reload");
  await waitUntil(async () => (await badges(dmButton(bob.page, ALICE))).mentions === "@1",
    "the direct conversation's mention badge after a reload (GET /conversations)");
  await shot(bob.page, "desktop-badges-bob.png");
  await dmButton(bob.page, ALICE).click();
  await waitUntil(async () => (await badges(dmButton(bob.page, ALICE))).unread === "",
    "the direct conversation's badge to clear");
  assert.ok(await messageWith(bob.page, `@${BOB} are you there?`).evaluate((li) =>
    li.classList.contains("mentions-me")));
});

test("a read in one of bob's tabs clears the badge in his other tab", async (t) => {
  const second = await newUser();
  t.after(() => second.context.close());
  await logIn(second.page, BOB);
  await openRoom(second.page, "general");
  await openRoom(bob.page, "general");
  const news = "news-" + suffix;
  await openRoom(alice.page, news);
  await send(alice.page, "news for both tabs " + suffix);
  for (const page of [bob.page, second.page]) {
    await waitUntil(async () => (await badges(roomButton(page, news))).unread === "1",
      "the badge in each of bob's tabs");
  }
  await openRoom(bob.page, news);
  await waitUntil(async () => (await badges(roomButton(second.page, news))).unread === "",
    "the other tab's badge to clear on the read event");
  assert.deepEqual(second.problems, []);
});

test("typing: bob sees who is typing where, names expire by themselves, a message clears its sender's", async () => {
  const daveToken = await apiRegister("dave_" + suffix);
  const general = (await apiRequest(daveToken, "GET", "/rooms")).rooms.find((r) => r.is_default);
  await openRoom(alice.page, "general");
  await openRoom(bob.page, "general");
  const aliceBox = alice.page.getByLabel("Message", { exact: true });
  await aliceBox.pressSequentially("hello the");
  await typingLine(bob.page).filter({ hasText: `${ALICE} is typing…` }).waitFor();

  // Alice's page ignores her own signal: bob's, which came after it on her stream, is alone.
  await bob.page.getByLabel("Message", { exact: true }).pressSequentially("hm");
  await typingLine(alice.page).filter({ hasText: new RegExp(`^${BOB} is typing…$`) }).waitFor();

  await apiRequest(daveToken, "POST", `/rooms/${general.id}/typing`);
  await typingLine(bob.page).filter({ hasText: `${ALICE} and dave_${suffix} are typing…` }).waitFor();
  await shot(bob.page, "desktop-typing-bob.png");
  // Nobody signals again: each name goes expires_in_ms (6 s) after its last signal.
  await waitUntil(async () => (await typingLine(bob.page).textContent()) === "",
    "the typing indicator to expire", 15000);
  await bob.page.getByLabel("Message", { exact: true }).fill("");

  // A message from the typer clears the indicator at once, long before it would expire.
  await aliceBox.pressSequentially("re");
  await typingLine(bob.page).filter({ hasText: `${ALICE} is typing…` }).waitFor();
  const done = "done typing " + suffix;
  await send(alice.page, done);
  await bodiesExactly(bob.page, done).waitFor();
  assert.equal(await typingLine(bob.page).textContent(), "");

  // In a direct conversation the signal belongs to the conversation with its sender.
  await openDm(alice.page, BOB);
  await openDm(bob.page, ALICE);
  await alice.page.getByLabel("Message", { exact: true }).pressSequentially("psst");
  await typingLine(bob.page).filter({ hasText: `${ALICE} is typing…` }).waitFor();
  await alice.page.getByLabel("Message", { exact: true }).fill("");
});

test("edit and delete: alice changes and deletes her messages, bob sees it live and after a reload", async () => {
  await openRoom(alice.page, "general");
  await openRoom(bob.page, "general");
  const draft = "draft " + suffix;
  const doomed = "doomed " + suffix;
  await send(alice.page, draft);
  await send(alice.page, doomed);
  await bodiesExactly(bob.page, doomed).waitFor();
  const editedId = await messageWith(alice.page, draft).getAttribute("data-id");
  const deletedId = await messageWith(alice.page, doomed).getAttribute("data-id");
  const onBob = (id) => bob.page.locator(`#messages .msg[data-id="${id}"]`);
  const onAlice = (id) => alice.page.locator(`#messages .msg[data-id="${id}"]`);
  // Only the sender has the controls.
  assert.equal(await onBob(editedId).getByRole("button", { name: "Edit" }).count(), 0);

  await onAlice(editedId).getByRole("button", { name: "Edit" }).click();
  const final = `final ${suffix}, @${BOB}`;
  const box = onAlice(editedId).getByLabel("Edit message");
  await box.fill(final);
  await box.press("Enter");
  await onBob(editedId).locator(".body", { hasText: final }).waitFor();
  await onBob(editedId).locator(".edited", { hasText: "(edited)" }).waitFor();
  // Its mentions were found again: now it mentions bob.
  await onBob(editedId).locator(".mention", { hasText: "@" + BOB }).waitFor();
  assert.ok(await onBob(editedId).evaluate((li) => li.classList.contains("mentions-me")));
  await onAlice(editedId).locator(".edited").waitFor();

  await onAlice(deletedId).getByRole("button", { name: "Delete" }).click();
  await onAlice(deletedId).getByRole("button", { name: "Yes, delete" }).click();
  await onBob(deletedId).locator(".body", { hasText: /^message deleted$/ }).waitFor();
  for (const li of [onBob(deletedId), onAlice(deletedId)]) {
    assert.equal(await li.getByRole("button").count(), 0, "a deleted message has no controls");
    assert.equal(await li.locator(".body").evaluate((p) => getComputedStyle(p).fontStyle), "italic");
  }
  assert.equal(await bodiesExactly(bob.page, doomed).count(), 0);

  await bob.page.reload();
  await status(bob.page, "connected").waitFor();
  await onBob(deletedId).locator(".body", { hasText: /^message deleted$/ }).waitFor();
  await onBob(editedId).locator(".edited").waitFor();
  assert.equal(await onBob(editedId).locator(".body").textContent(), final);
});

test("reactions: both react, counts update live, a double-click counts once", async () => {
  await openRoom(alice.page, "general");
  await openRoom(bob.page, "general");
  const text = "react to me " + suffix;
  await send(alice.page, text);
  await bodiesExactly(bob.page, text).waitFor();
  const onAlice = messageWith(alice.page, text);
  const onBob = messageWith(bob.page, text);
  const chip = (li, emoji) => li.locator(".reaction", { hasText: emoji });
  // The chips of a message, as "👍 2 (me)" when pressed, sorted; chipsAre waits for them.
  const chips = async (li) => (await li.locator(".reaction").evaluateAll((buttons) =>
    buttons.map((b) => b.textContent + (b.getAttribute("aria-pressed") === "true" ? " (me)" : "")))).sort();
  const chipsAre = (li, expected) => waitUntil(async () =>
    JSON.stringify(await chips(li)) === JSON.stringify([...expected].sort()),
  "the reactions " + expected.join(", "));

  await onAlice.getByRole("button", { name: "Add a reaction" }).click();
  await onAlice.getByRole("button", { name: "React with 👍" }).click();
  await chip(onAlice, "👍 1").waitFor();
  await chip(onBob, "👍 1").waitFor();
  await chipsAre(onBob, ["👍 1"]);

  await chip(onBob, "👍 1").dblclick();
  await chip(onAlice, "👍 2").waitFor();
  await chip(onBob, "👍 2").waitFor();
  // A later reaction as a sentinel: anything more from the double-click would come before it.
  await onBob.getByRole("button", { name: "Add a reaction" }).click();
  await onBob.getByRole("button", { name: "React with 🎉" }).click();
  await chip(onAlice, "🎉 1").waitFor();
  assert.deepEqual(await chips(onAlice), ["👍 2 (me)", "🎉 1"].sort());
  await chipsAre(onBob, ["👍 2 (me)", "🎉 1 (me)"]);

  // A click takes one's own back; "❤" and "❤️" are one reaction.
  await chip(onBob, "👍 2").click();
  await chip(onAlice, "👍 1").waitFor();
  await onBob.getByRole("button", { name: "Add a reaction" }).click();
  await onBob.getByRole("button", { name: "React with ❤️" }).click();
  await chip(onAlice, "❤️ 1").waitFor();
  const id = await onAlice.getAttribute("data-id");
  await apiRequest(await apiLogin(ALICE), "PUT", `/messages/${id}/reactions/${encodeURIComponent("❤")}`);
  await chip(onBob, "❤️ 2").waitFor();
  await chipsAre(onBob, ["❤️ 2 (me)", "👍 1", "🎉 1 (me)"]);
  await chipsAre(onAlice, ["❤️ 2 (me)", "👍 1 (me)", "🎉 1"]);

  // History brings the same.
  await alice.page.reload();
  await status(alice.page, "connected").waitFor();
  await messageWith(alice.page, text).waitFor();
  await chipsAre(messageWith(alice.page, text), ["❤️ 2 (me)", "👍 1 (me)", "🎉 1"]);
});

test("screenshot: badges, a reaction and the typing indicator", async () => {
  await openRoom(bob.page, "general");
  await openRoom(alice.page, "news-" + suffix);
  await send(alice.page, `@${BOB} one more thing`);
  await waitUntil(async () => (await badges(roomButton(bob.page, "news-" + suffix))).mentions === "@1",
    "the mention badge");
  await openRoom(alice.page, "general");
  await alice.page.getByLabel("Message", { exact: true }).pressSequentially("typing away");
  await typingLine(bob.page).filter({ hasText: `${ALICE} is typing…` }).waitFor();
  await messageWith(bob.page, "react to me " + suffix).locator(".reaction").first().waitFor();
  await shot(bob.page, "desktop-features-bob.png");
  await alice.page.getByLabel("Message", { exact: true }).fill("");
});

test("search: a room's message and a direct one are found and opened at the message; rooms bob is not in are not searched", async () => {
  const word = "needle" + suffix;
  const archive = "archive-" + suffix;
  const { room, aliceToken } = await sharedRoom(archive);
  const old = `${word} in the archive`;
  await apiPost(aliceToken, "/messages", { room_id: room.id, body: old });
  for (let i = 1; i <= 60; i++) {
    await apiPost(aliceToken, "/messages", { room_id: room.id, body: "filler " + i });
  }
  const secret = await apiPost(aliceToken, "/rooms", { name: "secret-" + suffix });
  await apiPost(aliceToken, "/messages", { room_id: secret.id, body: `${word} in secret` });
  const direct = `${word}, just for you`;
  await apiPost(aliceToken, "/messages", { to: BOB, body: direct });

  const { page } = bob;
  await openRoom(page, "general");
  await page.getByLabel("Search messages").fill(word);
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await page.locator("#search-summary", { hasText: "2 results" }).waitFor();
  const hits = await page.locator("#search-hits .hit").allTextContents();
  assert.equal(hits.length, 2);
  assert.ok(hits[0].includes("direct with " + ALICE) && hits[0].includes(direct), hits[0]);
  assert.ok(hits[1].includes("# " + archive) && hits[1].includes(old), hits[1]);
  assert.ok(!hits.some((h) => h.includes("secret")), "a room bob is not in is not searched");
  assert.equal(await page.locator("#search-hits mark").first().textContent(), word);
  await shot(page, "desktop-search-bob.png");

  // The room's message is older than the first page: older pages load until it is there.
  await page.locator("#search-hits .hit", { hasText: archive }).click();
  await page.locator("#conv-title", { hasText: "# " + archive }).waitFor();
  const found = messageWith(page, old);
  await found.and(page.locator(".msg.flash")).waitFor();
  assert.ok(await bodies(page).count() > 50);
  const inView = () => found.evaluate((li) => {
    const box = li.getBoundingClientRect();
    const view = document.getElementById("scroller").getBoundingClientRect();
    return box.top >= view.top && box.bottom <= view.bottom;
  });
  assert.ok(await inView(), "the message is scrolled into view");

  await page.locator("#search-hits .hit", { hasText: "direct with" }).click();
  await page.locator("#conv-title", { hasText: ALICE }).waitFor();
  await messageWith(page, direct).and(page.locator(".msg.flash")).waitFor();

  await page.getByLabel("Search messages").fill("one two three four five six seven eight nine ten eleven");
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await page.locator("#search-error", { hasText: "at most 10 words" }).waitFor();
  assert.equal(await page.locator("#search-results").isVisible(), false);
});

test("statistics: the activity chart and the rankings render", async (t) => {
  const { page } = bob;
  await page.getByRole("button", { name: "Statistics" }).click();
  t.after(() => page.getByRole("button", { name: "Chat", exact: true }).click());
  const bars = page.locator("#chart svg rect.bar");
  const unavailable = page.locator("#stats-unavailable");
  await waitUntil(async () => (await bars.count()) > 0 || (await unavailable.isVisible()),
    "the chart's bars", 15000);
  assert.equal(await unavailable.isVisible(), false, "the page says the /stats endpoints are unavailable");
  const heights = await bars.evaluateAll((rects) => rects.map((r) => Number(r.getAttribute("height"))));
  assert.ok(heights.some((h) => h > 0), "at least one bar shows messages");
  await page.locator("#stats-active li", { hasText: ALICE }).waitFor();
  await page.locator("#stats-solicited li", { hasText: BOB }).waitFor();
  await page.locator("#stats-rooms li", { hasText: "hist-" + suffix }).waitFor();
  await shot(page, "desktop-stats.png");
});

test("after the server restarts, the stream reconnects and resumes without duplicates", async () => {
  await openRoom(alice.page, "general");
  await openRoom(bob.page, "general");
  await status(bob.page, "connected").waitFor();
  // A message of its own, so that the test does not lean on earlier ones having posted.
  const earlier = "before the restart " + suffix;
  await send(alice.page, earlier);
  await bodiesExactly(bob.page, earlier).waitFor();
  // The room's history is shown before it is taken as "before".
  await waitUntil(async () => (await bodies(bob.page).count()) > 0, "general's history", 15000);
  const before = await bodies(bob.page).allTextContents();

  await stopServer();
  await status(alice.page, "reconnecting").waitFor();
  await status(bob.page, "reconnecting").waitFor();
  await shot(bob.page, "desktop-reconnecting-bob.png");

  await startServer();
  await status(alice.page, "connected").waitFor({ timeout: 30000 });
  await status(bob.page, "connected").waitFor({ timeout: 30000 });
  // The stream resumed from the last event id (the `ready` event says so).
  await bob.page.locator('#status[data-resumed="true"]').waitFor();

  const text = "after the restart " + suffix;
  await send(alice.page, text);
  await bodiesExactly(bob.page, text).waitFor();
  // Anything repeated would arrive before a later message on the same stream.
  const marker = "and one more " + suffix;
  await send(alice.page, marker);
  await bodiesExactly(bob.page, marker).waitFor();
  assert.deepEqual(await bodies(bob.page).allTextContents(), [...before, text, marker]);
  assert.equal(await bodiesExactly(alice.page, text).count(), 1);
});

test("a network drop: the stream resumes with Last-Event-ID and replays what was missed, once", async (t) => {
  // Carol reaches the server through a TCP relay that the test can cut, like a lost network.
  const relay = await startRelay(portOf());
  t.after(() => relay.close());
  const carol = await newUser();
  t.after(() => carol.context.close());
  const { page } = carol;
  const name = "carol_" + suffix;
  await page.goto(`http://127.0.0.1:${relay.port}/`);
  await page.getByLabel("Username", { exact: true }).fill(name);
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await page.getByRole("button", { name: "Register" }).click();
  await status(page, "connected").waitFor();
  await page.locator("#history-note").waitFor();
  const before = await bodies(page).allTextContents();

  relay.cut();
  await status(page, "reconnecting").waitFor();
  const missed = "sent while carol was cut off " + suffix;
  await send(alice.page, missed);
  relay.restore();

  await bodiesExactly(page, missed).waitFor({ timeout: 30000 });
  await status(page, "connected").waitFor();
  await page.locator('#status[data-resumed="true"]').waitFor();
  const marker = "carol is back " + suffix;
  await send(alice.page, marker);
  await bodiesExactly(page, marker).waitFor();

  // Again, but now the way back answers 503 for a while: the browser gives up on the stream
  // (an HTTP error closes an EventSource for good) and the page opens a new one itself.
  relay.cut({ answer: 503 });
  await status(page, "reconnecting").waitFor();
  const missedAgain = "sent while the proxy said 503 " + suffix;
  await send(alice.page, missedAgain);
  await waitUntil(() => relay.refused >= 3, "the page to retry through the failing relay");
  relay.restore();
  await bodiesExactly(page, missedAgain).waitFor({ timeout: 30000 });
  await status(page, "connected").waitFor();
  const lastMarker = "carol is back again " + suffix;
  await send(alice.page, lastMarker);
  await bodiesExactly(page, lastMarker).waitFor();
  assert.deepEqual(await bodies(page).allTextContents(),
    [...before, missed, marker, missedAgain, lastMarker]);
  assert.deepEqual(carol.problems, []);
});

test("narrow screen: one column, conversation list and conversation in turn", async () => {
  const { page } = bob;
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("button", { name: "Chat", exact: true }).click();
  await page.getByRole("button", { name: "← Conversations" }).click();
  await page.locator("#room-list").waitFor();
  assert.equal(await page.locator("#composer").isVisible(), false);
  await shot(page, "narrow-list.png");
  await openRoom(page, "general");
  assert.equal(await page.locator("#room-list").isVisible(), false);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `no horizontal scrolling (page is ${width}px wide)`);
  await shot(page, "narrow-chat.png");
  await page.getByRole("button", { name: "Statistics" }).click();
  await page.locator("#stats-title").waitFor();
  await shot(page, "narrow-stats.png");

  const visitor = await newUser({ width: 390, height: 844 });
  await visitor.page.goto(BASE + "/");
  await visitor.page.getByRole("button", { name: "Log in" }).waitFor();
  await shot(visitor.page, "narrow-login.png");
  await visitor.context.close();
});

test("no script errors or CSP violations on the way", () => {
  assert.deepEqual([...alice.problems, ...bob.problems], []);
});
