// The chat page: plain JavaScript, no framework, no build step.
//
// Rules kept throughout: every piece of user content goes into the page as text (textContent,
// never innerHTML); the access token lives in sessionStorage and travels only in the
// Authorization header (the browser's EventSource authenticates with the login cookie).
"use strict";

(() => {
  const TOKEN_KEY = "chat.token";
  const USER_KEY = "chat.user";
  const OPEN_KEY = "chat.open";
  const PAGE_SIZE = 50;
  const REFRESH_MS = 30000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  // Creates an element; `text` is always set as text, never parsed as HTML.
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  const state = {
    token: null,
    me: null, // {id, username}
    rooms: [],
    dms: [], // usernames of direct conversations, most recent first
    unread: new Map(), // conversation key -> count
    online: new Map(), // user id -> username
    current: null, // the open conversation
    source: null, // the EventSource
    lastEventId: "",
    reconnectTimer: null,
    reconnectDelay: 1000,
    refreshTimer: null,
    sending: false,
    chart: null, // the last activity data drawn
    pendingKey: null, // Idempotency-Key of the message being sent, reused on retry
    pendingText: null,
  };

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, headers) {
    const init = { method, headers: { ...(headers || {}) }, credentials: "same-origin" };
    if (state.token) init.headers.Authorization = "Bearer " + state.token;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch {
      throw new ApiError(0, "network", "The server cannot be reached; try again in a moment.");
    }
    if (res.status === 204) return null;
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const err = new ApiError(
        res.status,
        (data && data.error) || "http_" + res.status,
        (data && data.message) || res.statusText || "request failed",
      );
      if (res.status === 401 && state.token && !path.startsWith("/auth/")) {
        endSession("Your session has ended; please log in again.");
      }
      throw err;
    }
    return data;
  }

  // ---------------------------------------------------------------- helpers

  function setStatus(kind, text) {
    const labels = {
      offline: "Not logged in",
      connecting: "Connecting…",
      connected: "Connected",
      reconnecting: "Reconnecting…",
    };
    $("status").dataset.state = kind;
    $("status-text").textContent = text || labels[kind];
  }

  function announce(text) {
    const box = $("announcer");
    box.append(el("p", null, text));
    while (box.childElementCount > 5) box.firstElementChild.remove();
  }

  function showError(id, err) {
    $(id).textContent = err ? err.message || String(err) : "";
  }

  function newIdempotencyKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function formatTime(iso) {
    const date = new Date(iso);
    const sameDay = date.toDateString() === new Date().toDateString();
    return sameDay
      ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function keyOf(conv) {
    return conv.kind === "room" ? "room:" + conv.id : "dm:" + conv.name.toLowerCase();
  }

  // The conversation a message belongs to, as seen by the signed-in user.
  function conversationOf(message) {
    if (message.room_id) return { kind: "room", id: message.room_id };
    const partner = message.sender.id === state.me.id ? message.to.username : message.sender.username;
    return { kind: "dm", name: partner };
  }

  // ---------------------------------------------------------------- session

  async function login(username, password) {
    const data = await api("POST", "/auth/login", { username, password });
    state.token = data.access_token;
    state.me = { id: data.user.id, username: data.user.username };
    sessionStorage.setItem(TOKEN_KEY, state.token);
    sessionStorage.setItem(USER_KEY, JSON.stringify(state.me));
    enterApp();
  }

  async function onAuthSubmit(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const register = event.submitter && event.submitter.value === "register";
    const username = $("auth-username").value.trim();
    const password = $("auth-password").value;
    showError("auth-error", null);
    if (!username || !password) {
      showError("auth-error", new Error("Enter a username and a password."));
      return;
    }
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    try {
      if (register) await api("POST", "/auth/register", { username, password });
      await login(username, password);
      form.reset();
    } catch (err) {
      showError("auth-error", err);
    } finally {
      for (const button of form.querySelectorAll("button")) button.disabled = false;
    }
  }

  async function logout() {
    closeEvents();
    try {
      await api("POST", "/auth/logout");
    } catch {
      // The token is forgotten here anyway.
    }
    endSession("");
  }

  function endSession(message) {
    closeEvents();
    clearInterval(state.refreshTimer);
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    sessionStorage.removeItem(OPEN_KEY);
    Object.assign(state, {
      token: null, me: null, rooms: [], dms: [], current: null, lastEventId: "",
      pendingKey: null, pendingText: null,
    });
    state.unread.clear();
    state.online.clear();
    $("messages").replaceChildren();
    $("composer-input").value = "";
    $("account").hidden = true;
    $("chat-view").hidden = true;
    $("stats-view").hidden = true;
    $("auth-view").hidden = false;
    setStatus("offline");
    showError("auth-error", message ? new Error(message) : null);
    $("auth-username").focus();
  }

  function enterApp() {
    $("me-name").textContent = state.me.username;
    $("auth-view").hidden = true;
    $("account").hidden = false;
    state.dms = loadDms();
    $("chat-view").dataset.pane = "chat";
    showView("chat");
    connectEvents();
    refreshSide();
    loadConversations();
    clearInterval(state.refreshTimer);
    state.refreshTimer = setInterval(refreshSide, REFRESH_MS);
    let open = null;
    try {
      open = JSON.parse(sessionStorage.getItem(OPEN_KEY) || "null");
    } catch {
      open = null;
    }
    if (open) openConversation(open, false);
    else openDefaultRoom();
  }

  function showView(which) {
    $("chat-view").hidden = which !== "chat";
    $("stats-view").hidden = which !== "stats";
    $("show-chat").setAttribute("aria-pressed", String(which === "chat"));
    $("show-stats").setAttribute("aria-pressed", String(which === "stats"));
    if (which === "stats") loadStats();
  }

  // ---------------------------------------------------------------- sidebar

  function dmStorageKey() {
    return "chat.dms." + state.me.id;
  }

  function loadDms() {
    try {
      const list = JSON.parse(localStorage.getItem(dmStorageKey()) || "[]");
      return Array.isArray(list) ? list.filter((n) => typeof n === "string") : [];
    } catch {
      return [];
    }
  }

  function rememberDm(name) {
    const rest = state.dms.filter((n) => n.toLowerCase() !== name.toLowerCase());
    state.dms = [name, ...rest].slice(0, 50);
    localStorage.setItem(dmStorageKey(), JSON.stringify(state.dms));
    keepFocus(renderDms);
  }

  async function refreshSide() {
    try {
      await Promise.all([loadRooms(), loadOnline()]);
      showError("side-error", null);
    } catch (err) {
      showError("side-error", err);
    }
  }

  async function loadRooms() {
    const data = await api("GET", "/rooms");
    state.rooms = data.rooms;
    keepFocus(renderRooms);
  }

  // The server's list of direct conversations (most recent first), so they show on every
  // device; read on entering and after a resync only, since the event stream keeps the list
  // current meanwhile (rememberDm). Conversations only opened here, with nothing sent yet,
  // follow; the open one is always kept.
  async function loadConversations() {
    try {
      const data = await api("GET", "/conversations?limit=50");
      const names = data.conversations.map((c) => c.with.username);
      const listed = new Set(names.map((n) => n.toLowerCase()));
      const local = state.dms.filter((n) => !listed.has(n.toLowerCase()));
      const open = state.current && state.current.kind === "dm" ? state.current.name : null;
      if (open && !listed.has(open.toLowerCase()) && !local.includes(open)) local.unshift(open);
      state.dms = [...names, ...local.slice(0, 20)];
      localStorage.setItem(dmStorageKey(), JSON.stringify(state.dms));
      keepFocus(renderDms);
    } catch (err) {
      showError("side-error", err);
    }
  }

  async function loadOnline() {
    const data = await api("GET", "/users/online?limit=200");
    state.online.clear();
    for (const user of data.users) state.online.set(user.id, user.username);
    keepFocus(renderOnline);
  }

  // Re-renders part of the sidebar without losing the keyboard focus: the focused button is
  // found again by its data-key.
  function keepFocus(render) {
    const key = document.activeElement && document.activeElement.dataset.key;
    render();
    if (key) document.querySelector(`.sidebar [data-key="${CSS.escape(key)}"]`)?.focus();
  }

  // A sidebar button: a label and, when there is something unread, a badge.
  function conversationButton(label, key, onClick) {
    const button = el("button", "item");
    button.type = "button";
    button.dataset.key = key;
    button.append(el("span", "name", label));
    const unread = state.unread.get(key) || 0;
    if (unread) {
      const badge = el("span", "badge", unread);
      badge.append(el("span", "visually-hidden", " unread"));
      button.append(badge);
    }
    if (state.current && state.current.key === key) button.setAttribute("aria-current", "true");
    button.addEventListener("click", onClick);
    return button;
  }

  function renderRooms() {
    const joined = $("room-list");
    const others = $("other-room-list");
    joined.replaceChildren();
    others.replaceChildren();
    for (const room of state.rooms) {
      const li = el("li");
      if (room.joined) {
        li.append(conversationButton("# " + room.name, "room:" + room.id, () =>
          openConversation({ kind: "room", id: room.id, name: room.name }, true)));
        joined.append(li);
      } else {
        li.className = "join-row";
        li.append(el("span", "name", "# " + room.name));
        const join = el("button", "secondary small", "Join");
        join.type = "button";
        join.setAttribute("aria-label", "Join room " + room.name);
        join.dataset.key = "join:" + room.id;
        join.addEventListener("click", () => joinRoom(room));
        li.append(join);
        others.append(li);
      }
    }
    $("other-rooms-title").hidden = others.childElementCount === 0;
    const conv = state.current;
    const room = conv && conv.kind === "room" && state.rooms.find((r) => r.id === conv.id);
    $("leave-room").hidden = !(room && !room.is_default);
  }

  function renderDms() {
    const list = $("dm-list");
    list.replaceChildren();
    for (const name of state.dms) {
      const li = el("li");
      li.append(conversationButton(name, "dm:" + name.toLowerCase(), () =>
        openConversation({ kind: "dm", name }, true)));
      list.append(li);
    }
    if (!state.dms.length) list.append(el("li", "empty", "No conversations yet"));
  }

  function renderOnline() {
    const list = $("online-list");
    list.replaceChildren();
    const users = [...state.online.values()].sort((a, b) => a.localeCompare(b));
    for (const name of users) {
      const li = el("li");
      if (state.me && name === state.me.username) {
        li.append(el("span", "item self", name + " (you)"));
      } else {
        const button = el("button", "item");
        button.type = "button";
        button.append(el("span", "presence-dot"), el("span", "name", name));
        button.setAttribute("aria-label", "Message " + name);
        button.dataset.key = "online:" + name;
        button.addEventListener("click", () => openConversation({ kind: "dm", name }, true));
        li.append(button);
      }
      list.append(li);
    }
    $("online-count").textContent = "(" + users.length + ")";
  }

  function renderSide() {
    keepFocus(() => {
      renderRooms();
      renderDms();
    });
  }

  async function joinRoom(room) {
    showError("side-error", null);
    try {
      await api("POST", "/rooms/" + encodeURIComponent(room.id) + "/join");
      await loadRooms();
      openConversation({ kind: "room", id: room.id, name: room.name }, true);
    } catch (err) {
      showError("side-error", err);
    }
  }

  async function onCreateRoom(event) {
    event.preventDefault();
    showError("side-error", null);
    const input = $("room-name");
    const name = input.value.trim();
    if (!name) return;
    try {
      const room = await api("POST", "/rooms", { name });
      input.value = "";
      await loadRooms();
      openConversation({ kind: "room", id: room.id, name: room.name }, true);
    } catch (err) {
      showError("side-error", err);
    }
  }

  async function onOpenDm(event) {
    event.preventDefault();
    showError("side-error", null);
    const input = $("dm-name");
    const name = input.value.trim();
    if (!name) return;
    try {
      const user = await api("GET", "/users/" + encodeURIComponent(name));
      input.value = "";
      openConversation({ kind: "dm", name: user.username }, true);
    } catch (err) {
      showError("side-error", err.status === 404 ? new Error("No user is called " + name + ".") : err);
    }
  }

  async function leaveRoom() {
    const conv = state.current;
    if (!conv || conv.kind !== "room") return;
    try {
      await api("POST", "/rooms/" + encodeURIComponent(conv.id) + "/leave");
      await loadRooms();
      openDefaultRoom();
    } catch (err) {
      showError("composer-error", err);
    }
  }

  async function openDefaultRoom() {
    try {
      if (!state.rooms.length) await loadRooms();
    } catch (err) {
      showError("side-error", err);
      return;
    }
    const room = state.rooms.find((r) => r.is_default) || state.rooms.find((r) => r.joined);
    if (room) openConversation({ kind: "room", id: room.id, name: room.name }, false);
  }

  // ---------------------------------------------------------------- conversation

  function openConversation(target, byUser) {
    const conv = {
      kind: target.kind, id: target.id, name: target.name,
      messages: new Map(), next: null, loading: false, loaded: false,
    };
    conv.key = keyOf(conv);
    if (conv.kind === "room" && !conv.name) {
      const room = state.rooms.find((r) => r.id === conv.id);
      conv.name = room ? room.name : "room";
    }
    state.current = conv;
    state.unread.delete(conv.key);
    if (conv.kind === "dm") rememberDm(conv.name);
    sessionStorage.setItem(OPEN_KEY, JSON.stringify({ kind: conv.kind, id: conv.id, name: conv.name }));

    $("conv-title").textContent = conv.kind === "room" ? "# " + conv.name : conv.name;
    $("messages").replaceChildren();
    $("history-note").textContent = "";
    $("load-older").hidden = true;
    $("composer-input").disabled = false;
    $("send").disabled = false;
    $("composer-input").placeholder =
      "Message " + (conv.kind === "room" ? "#" + conv.name : conv.name) +
      " (Enter sends, Shift+Enter adds a new line)";
    showError("composer-error", null);
    renderSide();
    if (byUser) {
      $("chat-view").dataset.pane = "chat";
      $("composer-input").focus();
    }
    loadHistory(conv, null);
  }

  function historyPath(conv, before) {
    const base = conv.kind === "room"
      ? "/rooms/" + encodeURIComponent(conv.id) + "/messages"
      : "/conversations/" + encodeURIComponent(conv.name) + "/messages";
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) query.set("before", before);
    return base + "?" + query;
  }

  // Loads the newest page (before = null) or the page older than `before`.
  async function loadHistory(conv, before) {
    if (conv.loading) return;
    conv.loading = true;
    const scroller = $("scroller");
    try {
      const page = await api("GET", historyPath(conv, before));
      if (state.current !== conv) return;
      const fromBottom = scroller.scrollHeight - scroller.scrollTop;
      for (const message of page.messages) addMessage(conv, message);
      conv.next = page.next_before || null;
      conv.loaded = true;
      updateHistoryNote(conv);
      if (before) scroller.scrollTop = scroller.scrollHeight - fromBottom;
      else scrollToBottom();
    } catch (err) {
      if (state.current === conv) showError("composer-error", err);
    } finally {
      conv.loading = false;
    }
  }

  function updateHistoryNote(conv) {
    $("load-older").hidden = !conv.next;
    $("history-note").textContent = !conv.loaded || conv.next ? "" :
      conv.messages.size ? "This is the beginning of the conversation." : "No messages yet. Say hello!";
  }

  function loadOlder() {
    const conv = state.current;
    if (conv && conv.next && !conv.loading) loadHistory(conv, conv.next);
  }

  function scrollToBottom() {
    const scroller = $("scroller");
    scroller.scrollTop = scroller.scrollHeight;
  }

  function nearBottom() {
    const s = $("scroller");
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function messageElement(message) {
    const mine = message.sender.id === state.me.id;
    const li = el("li", mine ? "msg mine" : "msg");
    li.dataset.id = message.id;
    const meta = el("div", "meta");
    const time = el("time", null, formatTime(message.created_at));
    time.dateTime = message.created_at;
    time.title = new Date(message.created_at).toLocaleString();
    meta.append(el("span", "author", message.sender.username), time);
    li.append(meta, el("p", "body", message.body));
    return li;
  }

  // Adds a message to the open conversation, in history's order (message ids sort as history
  // does), once: history pages, the POST response and the SSE stream may all bring the same
  // message, and two instances' messages may come live in the other order.
  function addMessage(conv, message) {
    if (conv.messages.has(message.id)) return false;
    conv.messages.set(message.id, message);
    const li = messageElement(message);
    const list = $("messages");
    let after = list.lastElementChild;
    while (after && after.dataset.id > message.id) {
      after = after.previousElementSibling;
    }
    if (after) after.after(li);
    else list.prepend(li);
    if (conv.messages.size === 1) updateHistoryNote(conv);
    return true;
  }

  function onComposerKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  }

  async function onSend(event) {
    event.preventDefault();
    const conv = state.current;
    const input = $("composer-input");
    const body = input.value;
    if (!conv || state.sending || !body.trim()) return;
    if (state.pendingText !== body) {
      state.pendingKey = newIdempotencyKey();
      state.pendingText = body;
    }
    state.sending = true;
    showError("composer-error", null);
    try {
      const target = conv.kind === "room" ? { room_id: conv.id } : { to: conv.name };
      const message = await api("POST", "/messages", { ...target, body },
        { "Idempotency-Key": state.pendingKey });
      state.pendingKey = null;
      state.pendingText = null;
      if (input.value === body) input.value = "";
      if (state.current === conv && addMessage(conv, message)) scrollToBottom();
    } catch (err) {
      showError("composer-error", err);
    } finally {
      state.sending = false;
    }
  }

  // ---------------------------------------------------------------- live events

  function connectEvents() {
    closeEvents();
    // A stream opened by hand (after the browser gave up) resumes with the query parameter;
    // the browser's own reconnections send the Last-Event-ID header, which takes precedence.
    const url = state.lastEventId
      ? "/events?last_event_id=" + encodeURIComponent(state.lastEventId)
      : "/events";
    const source = new EventSource(url);
    state.source = source;
    setStatus(state.lastEventId ? "reconnecting" : "connecting");

    source.onopen = () => {
      if (state.source !== source) return;
      state.reconnectDelay = 1000;
      setStatus("connected");
    };
    source.onerror = () => {
      if (state.source !== source) return;
      setStatus("reconnecting");
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (an HTTP error such as
      // 401 or 503), so check the session and open a new stream after a pause.
      if (source.readyState === EventSource.CLOSED) scheduleReconnect();
    };

    const on = (type, handler) => source.addEventListener(type, (event) => {
      if (state.source !== source) return;
      if (event.lastEventId) state.lastEventId = event.lastEventId;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      handler(data);
    });
    on("ready", (data) => {
      setStatus("connected");
      $("status").dataset.resumed = String(data.resumed);
      if (data.user_id !== state.me.id) {
        // The login cookie is per browser; another tab logged in as someone else.
        endSession("This browser is now logged in as another user in another tab; log in again.");
      }
    });
    on("message", onLiveMessage);
    on("presence", (data) => {
      if (data.online) state.online.set(data.user_id, data.username);
      else state.online.delete(data.user_id);
      keepFocus(renderOnline);
    });
    on("room_member", (data) => {
      if (data.user_id === state.me.id) loadRooms().catch(() => {});
    });
    on("resync", () => {
      const conv = state.current;
      if (conv) openConversation(conv, false);
      refreshSide();
      loadConversations();
    });
    on("logout", () => endSession("You have been logged out."));
  }

  function closeEvents() {
    clearTimeout(state.reconnectTimer);
    if (state.source) state.source.close();
    state.source = null;
  }

  function scheduleReconnect() {
    clearTimeout(state.reconnectTimer);
    const delay = state.reconnectDelay;
    state.reconnectDelay = Math.min(delay * 2, 15000);
    state.reconnectTimer = setTimeout(async () => {
      try {
        await api("GET", "/users/me"); // a 401 ends the session
      } catch (err) {
        if (err.status === 401) return;
      }
      if (state.token) connectEvents();
    }, delay);
  }

  function onLiveMessage(message) {
    const target = conversationOf(message);
    const key = keyOf(target);
    const mine = message.sender.id === state.me.id;
    if (target.kind === "dm") rememberDm(target.name);
    const conv = state.current;
    if (conv && conv.key === key) {
      const stick = mine || nearBottom();
      if (addMessage(conv, message)) {
        if (stick) scrollToBottom();
        if (!mine) announce(message.sender.username + ": " + message.body);
      }
    } else if (!mine) {
      state.unread.set(key, (state.unread.get(key) || 0) + 1);
      renderSide();
      const room = target.kind === "room" && state.rooms.find((r) => r.id === target.id);
      announce("New message from " + message.sender.username + (room ? " in #" + room.name : ""));
    }
  }

  // ---------------------------------------------------------------- statistics

  const RANGES = {
    "24h": { ms: 24 * 3600e3, bucket: "hour" },
    "7d": { ms: 7 * 24 * 3600e3, bucket: "day" },
    "30d": { ms: 30 * 24 * 3600e3, bucket: "day" },
  };

  async function loadStats() {
    const range = RANGES[$("stats-range").value] || RANGES["24h"];
    const from = new Date(Date.now() - range.ms);
    // No `to`: the window ends now, and the server then counts the current hour from its
    // counters; an explicit `to` inside the hour would make it read that hour's messages.
    const period = new URLSearchParams({ from: from.toISOString() });
    const ranked = new URLSearchParams(period);
    ranked.set("limit", "10");
    const activity = new URLSearchParams(period);
    activity.set("bucket", range.bucket);
    const results = await Promise.allSettled([
      api("GET", "/stats/summary"),
      api("GET", "/stats/activity?" + activity),
      api("GET", "/stats/most-active?" + ranked),
      api("GET", "/stats/most-solicited?" + ranked),
      api("GET", "/stats/rooms?" + ranked),
    ]);
    const [summary, chart, active, solicited, rooms] = results.map((r) =>
      (r.status === "fulfilled" ? r.value : null));
    const none = results.every((r) => r.status === "rejected");
    $("stats-unavailable").hidden = !none;
    $("stats-content").hidden = none;
    renderSummary(summary);
    renderChart(chart);
    renderRanking("stats-active", active && active.users, (u) => u.username);
    renderRanking("stats-solicited", solicited && solicited.users, (u) => u.username);
    renderRanking("stats-rooms", rooms && rooms.rooms, (r) => "# " + r.name);
  }

  function renderSummary(summary) {
    const box = $("stats-summary");
    box.replaceChildren();
    if (!summary) return;
    const items = [
      ["Users", summary.users], ["Rooms", summary.rooms], ["Messages", summary.messages],
      ["Direct messages", summary.direct_messages], ["Online now", summary.online_now],
      ["Last 24 hours", summary.messages_last_24h],
    ];
    for (const [label, value] of items) {
      const div = el("div", "figure");
      div.append(el("dt", null, label), el("dd", null, Number(value || 0).toLocaleString()));
      box.append(div);
    }
  }

  function renderRanking(id, rows, label) {
    const list = $(id);
    list.replaceChildren();
    if (!rows) {
      list.append(el("li", "empty", "Statistics unavailable"));
      return;
    }
    if (!rows.length) list.append(el("li", "empty", "Nothing in this period"));
    for (const row of rows) {
      const li = el("li");
      li.append(el("span", "name", label(row)), el("span", "count", Number(row.count).toLocaleString()));
      list.append(li);
    }
  }

  function bucketLabel(iso, bucket) {
    const date = new Date(iso);
    return bucket === "hour"
      ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : date.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  // A bar chart as an inline SVG, built node by node.
  function renderChart(data) {
    state.chart = data;
    const box = $("chart");
    box.replaceChildren();
    if (!data || !Array.isArray(data.points)) {
      box.append(el("p", "empty", "Statistics unavailable"));
      return;
    }
    const points = data.points;
    const bucket = data.bucket;
    $("chart-caption").textContent = "Messages per " + (bucket === "day" ? "day" : "hour");
    // Drawn at the box's own width, so that the labels keep their size on a narrow screen.
    const W = Math.max(300, Math.round(box.clientWidth || 640)), H = 240;
    const left = 40, right = 8, top = 12, bottom = 28;
    const plotW = W - left - right, plotH = H - top - bottom;
    const peak = points.reduce((m, p) => Math.max(m, p.count), 0);
    const max = Math.max(1, niceCeil(peak));
    const total = points.reduce((s, p) => s + p.count, 0);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
      "aria-labelledby": "chart-caption chart-desc" });
    const busiest = points.find((p) => p.count === peak);
    const desc = svg("desc", { id: "chart-desc" });
    desc.textContent = points.length
      ? `${total} messages in ${points.length} ${bucket}s; busiest: ${bucketLabel(busiest.start, bucket)} with ${peak}.`
      : "No data for this period.";
    chart.append(desc);
    for (const fraction of [0, 0.5, 1]) {
      const y = top + plotH - fraction * plotH;
      chart.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }));
      const label = svg("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" });
      label.textContent = String(Math.round(max * fraction));
      chart.append(label);
    }
    const slot = plotW / Math.max(points.length, 1);
    const every = Math.ceil(points.length / Math.max(2, Math.floor(plotW / 80)));
    points.forEach((point, i) => {
      const h = (point.count / max) * plotH;
      const bar = svg("rect", {
        x: left + i * slot + slot * 0.1, y: top + plotH - h,
        width: Math.max(slot * 0.8, 1), height: h, class: "bar",
      });
      const tip = svg("title");
      tip.textContent = `${bucketLabel(point.start, bucket)}: ${point.count} messages`;
      bar.append(tip);
      chart.append(bar);
      if (i % every === 0) {
        const label = svg("text", { x: left + i * slot + slot / 2, y: H - 8, class: "axis", "text-anchor": "middle" });
        label.textContent = bucketLabel(point.start, bucket);
        chart.append(label);
      }
    });
    box.append(chart);
  }

  function niceCeil(n) {
    if (n <= 5) return Math.max(n, 1);
    const step = 10 ** Math.floor(Math.log10(n));
    for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * step >= n) return m * step;
    return 10 * step;
  }

  // ---------------------------------------------------------------- start

  function start() {
    $("auth-form").addEventListener("submit", onAuthSubmit);
    $("logout").addEventListener("click", logout);
    $("show-chat").addEventListener("click", () => showView("chat"));
    $("show-stats").addEventListener("click", () => showView("stats"));
    $("room-form").addEventListener("submit", onCreateRoom);
    $("dm-form").addEventListener("submit", onOpenDm);
    $("leave-room").addEventListener("click", leaveRoom);
    $("back").addEventListener("click", () => {
      $("chat-view").dataset.pane = "list";
      $("room-list").querySelector("button")?.focus();
    });
    $("composer").addEventListener("submit", onSend);
    $("composer-input").addEventListener("keydown", onComposerKey);
    $("load-older").addEventListener("click", loadOlder);
    $("scroller").addEventListener("scroll", () => {
      if ($("scroller").scrollTop < 60) loadOlder();
    });
    $("stats-range").addEventListener("change", loadStats);
    $("stats-refresh").addEventListener("click", loadStats);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (!$("stats-view").hidden && state.chart) renderChart(state.chart);
      }, 150);
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && state.token) refreshSide();
    });

    state.token = sessionStorage.getItem(TOKEN_KEY);
    try {
      state.me = JSON.parse(sessionStorage.getItem(USER_KEY) || "null");
    } catch {
      state.me = null;
    }
    if (state.token && state.me) enterApp();
    else endSession("");
  }

  start();
})();
