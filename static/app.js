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
  const TYPING_EVERY_MS = 3000; // one typing signal per conversation at most this often
  const SEARCH_PAGE = 20;
  const MAX_JUMP_PAGES = 20; // older pages loaded at most to reach a search hit
  const FLASH_MS = 3000;
  const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"]; // "❤️" as the server stores it

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
    // conversation key -> {unread, mentions, newest, touched}: `newest` is the newest message
    // counted (when known), so that a `read` event can tell whether it covers them all;
    // `touched` is when the stream last counted one, so that a list read meanwhile does not
    // lower the count.
    unread: new Map(),
    typing: new Map(), // conversation key -> Map(user id -> {username, timer})
    typingSent: { key: null, at: 0, request: null }, // our last typing signal
    pendingReactions: new Set(), // "message id|emoji" of requests in flight
    userNames: new Map(), // user id -> username, to name direct conversations by id
    search: null, // {q, next, shown} of the results shown
    readRefresh: null, // timer of a list re-read after a `read` event
    online: new Map(), // user id -> username
    current: null, // the open conversation
    source: null, // the EventSource
    lastEventId: "",
    reconnectTimer: null,
    reconnectDelay: 1000,
    refreshTimer: null,
    sending: false,
    chart: null, // the last activity data drawn
    // Per conversation, the post not yet answered: {key, text}; a retry of that text there
    // reuses its Idempotency-Key (a post stored after all is not stored twice).
    pendingPosts: new Map(),
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
    showError("account-error", null);
    try {
      await api("POST", "/auth/logout");
    } catch (err) {
      // Still logged in while the server takes the token (and the browser keeps its cookie):
      // say so, and stay. A token the server refuses already is as good as logged out.
      if (err.status !== 401) {
        showError("account-error", "Not logged out: " + err.message);
        connectEvents();
        return;
      }
    }
    endSession("");
  }

  function endSession(message) {
    closeEvents();
    showError("account-error", null);
    clearInterval(state.refreshTimer);
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    sessionStorage.removeItem(OPEN_KEY);
    Object.assign(state, {
      token: null, me: null, rooms: [], dms: [], current: null, lastEventId: "",
      typingSent: { key: null, at: 0, request: null },
    });
    state.pendingPosts.clear();
    state.unread.clear();
    state.online.clear();
    state.userNames.clear();
    clearAllTyping();
    clearTimeout(state.readRefresh);
    closeSearch();
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
    else markShownRead();
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
    const startedAt = performance.now();
    const data = await api("GET", "/rooms");
    state.rooms = data.rooms;
    for (const room of data.rooms) {
      if (room.joined && room.read_state) {
        applyListedReadState("room:" + room.id, room.read_state, null, startedAt);
      }
    }
    keepFocus(renderRooms);
  }

  // The server's list of direct conversations (most recent first), so they show on every
  // device; read on entering and after a resync only, since the event stream keeps the list
  // current meanwhile (rememberDm). Conversations only opened here, with nothing sent yet,
  // follow; the open one is always kept.
  async function loadConversations() {
    const startedAt = performance.now();
    try {
      const data = await api("GET", "/conversations?limit=50");
      for (const c of data.conversations) {
        state.userNames.set(c.with.id, c.with.username);
        applyListedReadState("dm:" + c.with.username.toLowerCase(), c.read_state,
          c.last_message ? c.last_message.id : null, startedAt);
      }
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
    for (const user of data.users) {
      state.online.set(user.id, user.username);
      state.userNames.set(user.id, user.username);
    }
    keepFocus(renderOnline);
  }

  // Re-renders part of the sidebar without losing the keyboard focus: the focused button is
  // found again by its data-key.
  function keepFocus(render) {
    const key = document.activeElement && document.activeElement.dataset.key;
    render();
    if (key) document.querySelector(`.sidebar [data-key="${CSS.escape(key)}"]`)?.focus();
  }

  // A sidebar button: a label and, when there is something unread, a badge with the count,
  // and another for the mentions among them.
  function conversationButton(label, key, onClick) {
    const button = el("button", "item");
    button.type = "button";
    button.dataset.key = key;
    button.append(el("span", "name", label));
    const entry = state.unread.get(key);
    if (entry && entry.unread) button.append(badge("badge unread", countLabel(entry.unread), " unread"));
    if (entry && entry.mentions) {
      button.append(badge("badge mentions", "@" + countLabel(entry.mentions), " mentioning you"));
    }
    if (state.current && state.current.key === key) button.setAttribute("aria-current", "true");
    button.addEventListener("click", onClick);
    return button;
  }

  function badge(className, text, spoken) {
    const node = el("span", className, text);
    node.append(el("span", "visually-hidden", spoken));
    return node;
  }

  // The server counts up to 100 and says "99+" from there.
  function countLabel(n) {
    return n >= 100 ? "99+" : String(n);
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

  // ---------------------------------------------------------------- unread and read markers

  // Whether the open conversation is on screen: this tab is visible and the conversation pane
  // is laid out (not the statistics, nor the list pane of a narrow screen).
  function isShown() {
    return document.visibilityState === "visible" && $("composer").getClientRects().length > 0;
  }

  function isShownKey(key) {
    return Boolean(state.current && state.current.key === key && isShown());
  }

  function maxId(a, b) {
    if (!a) return b || null;
    return b && b > a ? b : a;
  }

  // A read state from the server's lists. The open conversation, when on screen, is read (this
  // page marks it); a count that the stream raised while the list was being read stays.
  function applyListedReadState(key, readState, newest, startedAt) {
    const local = state.unread.get(key);
    if (isShownKey(key)) {
      state.unread.delete(key);
      return;
    }
    const entry = { unread: readState.unread, mentions: readState.unread_mentions, newest, touched: 0 };
    if (local && local.touched > startedAt) {
      entry.unread = Math.max(entry.unread, local.unread);
      entry.mentions = Math.max(entry.mentions, local.mentions);
      entry.newest = maxId(entry.newest, local.newest);
      entry.touched = local.touched;
    }
    if (entry.unread || entry.mentions) state.unread.set(key, entry);
    else state.unread.delete(key);
  }

  // A message from someone else that nobody is looking at here.
  function countUnread(key, message) {
    const entry = state.unread.get(key) || { unread: 0, mentions: 0, newest: null, touched: 0 };
    entry.unread += 1;
    if (mentionsMe(message)) entry.mentions += 1;
    entry.newest = maxId(entry.newest, message.id);
    entry.touched = performance.now();
    state.unread.set(key, entry);
    renderSide();
  }

  // Moves our read marker to the newest message of the open conversation while it is on
  // screen, and clears its badge. One request per newer message; the server never moves a
  // marker back, and tells our other tabs with a `read` event.
  async function markShownRead() {
    const conv = state.current;
    if (!conv || !isShown()) return;
    if (state.unread.delete(conv.key)) renderSide();
    const newest = conv.newest;
    if (!newest || (conv.readSent && conv.readSent >= newest)) return;
    conv.readSent = newest;
    try {
      await api("POST", conversationPath(conv) + "/read", { last_read: newest });
    } catch {
      if (conv.readSent === newest) conv.readSent = null; // tried again with the next message
    }
  }

  function dmKeyOfUser(userId) {
    const name = userId && state.userNames.get(userId);
    return name ? "dm:" + name.toLowerCase() : null;
  }

  // Another tab or device of ours read a conversation: its badge goes when the marker covers
  // every message counted here; otherwise (counts from a list, or a user not known by id) the
  // counts are read again.
  function onReadEvent(data) {
    const key = data.room_id ? "room:" + data.room_id : dmKeyOfUser(data.with_id);
    if (key && isShownKey(key)) return;
    const entry = key && state.unread.get(key);
    if (key && !entry) return;
    if (entry && entry.newest && data.last_read >= entry.newest) {
      state.unread.delete(key);
      renderSide();
      return;
    }
    clearTimeout(state.readRefresh);
    state.readRefresh = setTimeout(() => {
      loadRooms().catch((err) => showError("side-error", err));
      loadConversations();
    }, 250);
  }

  // ---------------------------------------------------------------- conversation

  // Opens a conversation and loads its newest page; returns it (conv.loading is the page's
  // promise while it loads).
  function openConversation(target, byUser) {
    const conv = {
      kind: target.kind, id: target.id, name: target.name,
      messages: new Map(), next: null, loading: null, loaded: false,
      newest: null, // the newest message id shown
      readSent: null, // the last message id our read marker was moved to
      updates: new Map(), // edits and deletions seen before their message was shown
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
    $("send").disabled = state.sending;
    $("composer-input").placeholder =
      "Message " + (conv.kind === "room" ? "#" + conv.name : conv.name) +
      " (Enter sends, Shift+Enter adds a new line)";
    showError("composer-error", null);
    renderSide();
    renderTyping();
    if (byUser) {
      $("chat-view").dataset.pane = "chat";
      $("composer-input").focus();
    }
    loadHistory(conv, null);
    return conv;
  }

  // The conversation's resource: its history, read marker and typing signals are under it.
  function conversationPath(conv) {
    return conv.kind === "room"
      ? "/rooms/" + encodeURIComponent(conv.id)
      : "/conversations/" + encodeURIComponent(conv.name);
  }

  function historyPath(conv, before) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) query.set("before", before);
    return conversationPath(conv) + "/messages?" + query;
  }

  // Loads the newest page (before = null) or the page older than `before`, one at a time:
  // while one loads, conv.loading is its promise (true once shown, false if it failed).
  function loadHistory(conv, before) {
    if (!conv.loading) {
      conv.loading = showHistoryPage(conv, before).finally(() => {
        conv.loading = null;
      });
    }
    return conv.loading;
  }

  async function showHistoryPage(conv, before) {
    const scroller = $("scroller");
    try {
      const page = await api("GET", historyPath(conv, before));
      if (state.current !== conv) return false;
      const fromBottom = scroller.scrollHeight - scroller.scrollTop;
      for (const message of page.messages) addMessage(conv, message);
      conv.next = page.next_before || null;
      conv.loaded = true;
      updateHistoryNote(conv);
      if (before) scroller.scrollTop = scroller.scrollHeight - fromBottom;
      else scrollToBottom();
      markShownRead();
      return true;
    } catch (err) {
      if (state.current === conv) showError("composer-error", err);
      return false;
    }
  }

  // A new stream (not a resume) delivers what is posted from now on: a message posted between
  // the history read and now came on no stream. The newest page is read again once the stream
  // is ready (messages already shown are not shown twice).
  async function catchUp(conv) {
    await conv.loading;
    if (state.current !== conv) return;
    if (!conv.loaded) {
      loadHistory(conv, null); // the first page failed: this is the first page
      return;
    }
    try {
      const page = await api("GET", historyPath(conv, null));
      if (state.current !== conv) return;
      const bottom = nearBottom();
      let added = false;
      for (const message of page.messages) added = addMessage(conv, message) || added;
      if (added && bottom) scrollToBottom();
      if (added) markShownRead();
    } catch {
      // Shown at the next resync or reload.
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

  function mentionsMe(message) {
    return Boolean(message.mentions && message.mentions.some((m) => m.id === state.me.id));
  }

  // A message: who and when, with its controls (react, and for our own, Edit and Delete); its
  // body, or that it was deleted; its reactions and the emoji picker. Whole messages are
  // rebuilt when they change (see replaceMessageNode).
  function messageElement(message) {
    const deleted = Boolean(message.deleted_at);
    const li = el("li", "msg");
    li.classList.toggle("mine", message.sender.id === state.me.id);
    li.classList.toggle("deleted", deleted);
    li.classList.toggle("mentions-me", !deleted && mentionsMe(message));
    li.dataset.id = message.id;
    const meta = metaElement(message);
    li.append(meta, bodyElement(message));
    if (deleted) return li;
    const picker = pickerElement(message.id);
    meta.append(controlsElement(message, picker));
    li.append(reactionsElement(message), picker);
    return li;
  }

  function metaElement(message) {
    const meta = el("div", "meta");
    const time = el("time", null, formatTime(message.created_at));
    time.dateTime = message.created_at;
    time.title = new Date(message.created_at).toLocaleString();
    meta.append(el("span", "author", message.sender.username), time);
    if (message.edited_at && !message.deleted_at) {
      const edited = el("span", "edited", "(edited)");
      edited.title = "Edited " + new Date(message.edited_at).toLocaleString();
      meta.append(edited);
    }
    return meta;
  }

  function controlsElement(message, picker) {
    const controls = el("div", "controls");
    const open = el("button", "react-open", "☺+");
    open.type = "button";
    open.setAttribute("aria-label", "Add a reaction");
    open.setAttribute("aria-expanded", "false");
    // A pick or Escape closes the picker, and the focus goes back to this button.
    open.addEventListener("click", () => togglePicker(open, picker));
    picker.addEventListener("keydown", (event) => {
      if (event.key === "Escape") togglePicker(open, picker);
    });
    for (const pick of picker.children) pick.addEventListener("click", () => togglePicker(open, picker));
    controls.append(open);
    if (message.sender.id === state.me.id) controls.append(ownActions(message.id));
    return controls;
  }

  function bodyElement(message) {
    if (message.deleted_at) return el("p", "body", "message deleted");
    const body = el("p", "body");
    body.append(...bodyNodes(message.body, message.mentions));
    return body;
  }

  // The body as text, each `@name` of a mentioned user in a <span class="mention">. The rule is
  // the server's (src/domain/mentions.rs): an `@` not inside a word, then a user name; a name
  // ending in `.` or `-` also counts without them ("thanks @bob.").
  function bodyNodes(body, mentions) {
    const names = new Set((mentions || []).map((m) => m.username.toLowerCase()));
    if (!names.size) return [body];
    const nodes = [];
    let last = 0;
    for (const match of body.matchAll(/(?<![\p{L}\p{N}_.\-@])@([A-Za-z0-9_.-]+)/gu)) {
      let name = match[1];
      if (!names.has(name.toLowerCase())) name = name.replace(/[.-]+$/, "");
      if (!names.has(name.toLowerCase())) continue;
      nodes.push(body.slice(last, match.index), el("span", "mention", "@" + name));
      last = match.index + 1 + name.length;
    }
    nodes.push(body.slice(last));
    return nodes;
  }

  function messageNode(id) {
    return $("messages").querySelector(`li[data-id="${CSS.escape(id)}"]`);
  }

  function replaceMessageNode(message) {
    const old = messageNode(message.id);
    if (!old) return;
    const li = messageElement(message);
    if (old.classList.contains("flash")) li.classList.add("flash");
    old.replaceWith(li);
  }

  // Adds a message to the open conversation, in history's order (message ids sort as history
  // does), once: history pages, the POST response and the SSE stream may all bring the same
  // message, and two instances' messages may come live in the other order.
  function addMessage(conv, message) {
    if (conv.messages.has(message.id)) return false;
    const update = conv.updates.get(message.id);
    if (update && isNewer(update, message)) message = { ...update, reactions: message.reactions };
    conv.messages.set(message.id, message);
    conv.newest = maxId(conv.newest, message.id);
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
    let pending = state.pendingPosts.get(conv.key);
    if (!pending || pending.text !== body) {
      pending = { key: newIdempotencyKey(), text: body };
      state.pendingPosts.set(conv.key, pending);
    }
    // One post at a time, in order; the text of a second Enter meanwhile stays in the box.
    state.sending = true;
    $("send").disabled = true;
    $("send").textContent = "Sending…";
    showError("composer-error", null);
    showError("account-error", null); // the user has moved on from a failed logout
    try {
      // A typing signal still on its way would reach the others after the message, and show
      // the indicator again that the message clears (waited for a second at most).
      await Promise.race([state.typingSent.request, new Promise((resolve) => setTimeout(resolve, 1000))]);
      const target = conv.kind === "room" ? { room_id: conv.id } : { to: conv.name };
      const message = await api("POST", "/messages", { ...target, body },
        { "Idempotency-Key": pending.key });
      if (state.pendingPosts.get(conv.key) === pending) state.pendingPosts.delete(conv.key);
      state.typingSent = { key: null, at: 0, request: null }; // the next keystroke says so again
      if (input.value === body) input.value = "";
      if (state.current === conv && addMessage(conv, message)) scrollToBottom();
    } catch (err) {
      showError("composer-error", err);
    } finally {
      state.sending = false;
      $("send").disabled = false;
      $("send").textContent = "Send";
    }
  }

  // ---------------------------------------------------------------- edits and deletions

  // Whether `update` (an answer or an event) is a later state of the message than `current`:
  // answers and events of one change may come in either order, and a deletion is final.
  function isNewer(update, current) {
    if (current.deleted_at) return false;
    if (update.deleted_at) return true;
    const editedAt = (message) => (message.edited_at ? Date.parse(message.edited_at) : 0);
    return editedAt(update) >= editedAt(current);
  }

  // Shows a message as it is now. Edits and deletions carry no reactions: the shown ones stay.
  function applyUpdate(conv, update) {
    const current = conv.messages.get(update.id);
    if (!current) {
      conv.updates.set(update.id, update); // its page may be on its way
      return;
    }
    if (!isNewer(update, current)) return;
    const message = { ...update, reactions: current.reactions };
    conv.messages.set(message.id, message);
    replaceMessageNode(message);
  }

  function ownActions(id) {
    const box = el("div", "actions");
    const edit = el("button", "secondary small", "Edit");
    edit.type = "button";
    edit.addEventListener("click", () => startEdit(id));
    const remove = el("button", "secondary small", "Delete");
    remove.type = "button";
    remove.addEventListener("click", () => confirmDelete(id));
    box.append(edit, remove);
    return box;
  }

  function focusMessageControl(id) {
    messageNode(id)?.querySelector(".actions button")?.focus();
  }

  // Edits in place: the body becomes a text box (Enter saves, Shift+Enter adds a line, Escape
  // cancels).
  function startEdit(id) {
    const conv = state.current;
    const message = conv && conv.messages.get(id);
    const li = messageNode(id);
    if (!message || !li || message.deleted_at) return;
    const form = el("form", "edit-form");
    const box = el("textarea");
    box.value = message.body;
    box.rows = 2;
    box.maxLength = 4000;
    box.setAttribute("aria-label", "Edit message");
    const save = el("button", "small", "Save");
    save.type = "submit";
    const cancel = el("button", "secondary small", "Cancel");
    cancel.type = "button";
    const error = el("p", "error");
    error.setAttribute("role", "alert");
    const row = el("div", "row");
    row.append(save, cancel);
    form.append(box, row, error);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      saveEdit(conv, id, box.value, error);
    });
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.key === "Escape") {
        event.preventDefault();
        endEdit(conv, id);
      }
    });
    cancel.addEventListener("click", () => endEdit(conv, id));
    li.querySelector(":scope > .body").replaceWith(form);
    li.querySelector(".actions")?.remove();
    box.focus();
  }

  function endEdit(conv, id) {
    const message = conv.messages.get(id);
    if (!message) return;
    replaceMessageNode(message);
    focusMessageControl(id);
  }

  async function saveEdit(conv, id, body, error) {
    const message = conv.messages.get(id);
    if (!body.trim()) {
      error.textContent = "A message cannot be empty; delete it instead.";
      return;
    }
    if (message && body === message.body) {
      endEdit(conv, id);
      return;
    }
    try {
      applyUpdate(conv, await api("PATCH", "/messages/" + encodeURIComponent(id), { body }));
      focusMessageControl(id);
    } catch (err) {
      error.textContent = err.code === "message_deleted" ? "This message was deleted meanwhile."
        : err.code === "not_the_sender" ? "Only its sender can edit a message." : err.message;
    }
  }

  // Delete asks once, in place.
  function confirmDelete(id) {
    const actions = messageNode(id)?.querySelector(".actions");
    if (!actions) return;
    const ask = el("div", "actions confirm");
    const yes = el("button", "danger small", "Yes, delete");
    yes.type = "button";
    const no = el("button", "secondary small", "Cancel");
    no.type = "button";
    ask.append(el("span", null, "Delete this message?"), yes, no);
    yes.addEventListener("click", () => deleteMessage(state.current, id));
    no.addEventListener("click", () => {
      ask.replaceWith(ownActions(id));
      focusMessageControl(id);
    });
    actions.replaceWith(ask);
    no.focus();
  }

  async function deleteMessage(conv, id) {
    try {
      applyUpdate(conv, await api("DELETE", "/messages/" + encodeURIComponent(id)));
    } catch (err) {
      showError("composer-error", err);
    }
  }

  // ---------------------------------------------------------------- reactions

  // The reactions under a message: a toggle per emoji ("👍 2", pressed when one is ours).
  function reactionsElement(message) {
    const box = el("div", "reactions");
    for (const reaction of message.reactions || []) {
      const button = el("button", "reaction", reaction.emoji + " " + reaction.count);
      button.type = "button";
      button.dataset.emoji = reaction.emoji;
      button.setAttribute("aria-pressed", String(reaction.me));
      button.title = (reaction.me ? "Take back your " : "React with ") + reaction.emoji;
      button.addEventListener("click", (event) => onReactionClick(event, message.id, reaction.emoji));
      box.append(button);
    }
    return box;
  }

  // A few emoji to react with, opened by the message's "☺+" button (see controlsElement).
  function pickerElement(id) {
    const picker = el("div", "picker");
    picker.hidden = true;
    picker.setAttribute("role", "group");
    picker.setAttribute("aria-label", "Reactions");
    for (const emoji of REACTIONS) {
      const pick = el("button", "pick", emoji);
      pick.type = "button";
      pick.setAttribute("aria-label", "React with " + emoji);
      pick.addEventListener("click", (event) => onReactionClick(event, id, emoji));
      picker.append(pick);
    }
    return picker;
  }

  function togglePicker(open, picker) {
    const closing = !picker.hidden;
    const focusInside = picker.contains(document.activeElement);
    picker.hidden = closing;
    open.setAttribute("aria-expanded", String(!closing));
    if (!closing) picker.firstElementChild.focus();
    else if (focusInside) open.focus();
  }

  // Rebuilds a message's reactions, keeping the focus on the same emoji.
  function renderReactions(message) {
    const old = messageNode(message.id)?.querySelector(":scope > .reactions");
    if (!old) return;
    const focused = old.contains(document.activeElement) && document.activeElement.dataset.emoji;
    const box = reactionsElement(message);
    old.replaceWith(box);
    if (focused) box.querySelector(`[data-emoji="${CSS.escape(focused)}"]`)?.focus();
  }

  // Toggles our reaction. The second click of a double-click, and a click while the request is
  // in flight, do nothing: they would take back what the first one did, or send it twice.
  async function onReactionClick(event, id, emoji) {
    const conv = state.current;
    const message = conv && conv.messages.get(id);
    const pending = id + "|" + emoji;
    if (!message || event.detail > 1 || state.pendingReactions.has(pending)) return;
    const adding = !(message.reactions || []).some((r) => r.emoji === emoji && r.me);
    state.pendingReactions.add(pending);
    try {
      await api(adding ? "PUT" : "DELETE",
        "/messages/" + encodeURIComponent(id) + "/reactions/" + encodeURIComponent(emoji));
      applyReaction(conv, { message_id: id, emoji, user_id: state.me.id, added: adding });
    } catch (err) {
      showError("composer-error", err);
    } finally {
      state.pendingReactions.delete(pending);
    }
  }

  // Applies one user's reaction change (a `reaction` event, or our own answer) to a shown
  // message. Ours counts once whichever comes first: `me` says whether it is counted.
  function applyReaction(conv, change) {
    const message = conv.messages.get(change.message_id);
    if (!message || message.deleted_at) return;
    const mine = change.user_id === state.me.id;
    const list = message.reactions || (message.reactions = []);
    let reaction = list.find((r) => r.emoji === change.emoji);
    if (mine && reaction && reaction.me === change.added) return;
    if (!reaction) {
      if (!change.added) return;
      reaction = { emoji: change.emoji, count: 0, me: false };
      list.push(reaction);
    }
    reaction.count = Math.max(0, reaction.count + (change.added ? 1 : -1));
    if (mine) reaction.me = change.added;
    if (!reaction.count) list.splice(list.indexOf(reaction), 1);
    renderReactions(message);
  }

  // ---------------------------------------------------------------- typing

  // Tells the others that we are typing: once per TYPING_EVERY_MS and conversation at most
  // (receivers show it for several seconds after each signal).
  function onComposerInput() {
    const conv = state.current;
    const sent = state.typingSent;
    if (!conv || !$("composer-input").value.trim()) return;
    const now = Date.now();
    if (sent.key === conv.key && now - sent.at < TYPING_EVERY_MS) return;
    state.typingSent = {
      key: conv.key, at: now,
      request: api("POST", conversationPath(conv) + "/typing").catch(() => {}),
    };
  }

  // Someone else is typing: shown for expires_in_ms after their last signal, or until their
  // next message.
  function onTyping(data) {
    if (data.user_id === state.me.id) return;
    const key = data.room_id ? "room:" + data.room_id : "dm:" + data.username.toLowerCase();
    let typers = state.typing.get(key);
    if (!typers) state.typing.set(key, (typers = new Map()));
    clearTimeout(typers.get(data.user_id)?.timer);
    const expiresIn = Math.max(0, Number(data.expires_in_ms) || 0);
    const timer = setTimeout(() => stopTyping(key, data.user_id), expiresIn);
    typers.set(data.user_id, { username: data.username, timer });
    renderTyping();
  }

  function stopTyping(key, userId) {
    const typers = state.typing.get(key);
    const typer = typers && typers.get(userId);
    if (!typer) return;
    clearTimeout(typer.timer);
    typers.delete(userId);
    if (!typers.size) state.typing.delete(key);
    renderTyping();
  }

  function clearAllTyping() {
    for (const typers of state.typing.values()) {
      for (const typer of typers.values()) clearTimeout(typer.timer);
    }
    state.typing.clear();
    renderTyping();
  }

  function renderTyping() {
    const typers = state.current && state.typing.get(state.current.key);
    const names = typers ? [...typers.values()].map((t) => t.username) : [];
    $("typing").textContent = typingText(names.sort((a, b) => a.localeCompare(b)));
  }

  function typingText(names) {
    if (!names.length) return "";
    if (names.length === 1) return names[0] + " is typing…";
    if (names.length > 3) return "Several people are typing…";
    return names.slice(0, -1).join(", ") + " and " + names[names.length - 1] + " are typing…";
  }

  // ---------------------------------------------------------------- search

  async function onSearch(event) {
    event.preventDefault();
    const q = $("search-input").value.trim();
    closeSearch();
    if (!q) return;
    state.search = { q, next: null, shown: 0 };
    await loadSearchPage(state.search);
  }

  // Shows a page of hits (the first, or the one after `search.next`).
  async function loadSearchPage(search) {
    const query = new URLSearchParams({ q: search.q, limit: String(SEARCH_PAGE) });
    if (search.next) query.set("before", search.next);
    $("search-more").disabled = true;
    try {
      const data = await api("GET", "/search?" + query);
      if (state.search !== search) return;
      for (const hit of data.hits) $("search-hits").append(searchHitElement(hit, search.q));
      search.shown += data.hits.length;
      search.next = data.next_before || null;
      $("search-summary").textContent = !search.shown ? "No messages found"
        : search.shown + (search.next ? "+ results" : search.shown === 1 ? " result" : " results");
      $("search-more").hidden = !search.next;
      $("search-results").hidden = false;
    } catch (err) {
      if (state.search === search) showError("search-error", err);
    } finally {
      $("search-more").disabled = false;
    }
  }

  function closeSearch() {
    state.search = null;
    $("search-results").hidden = true;
    $("search-hits").replaceChildren();
    showError("search-error", null);
  }

  // A hit: who, where and when, and the body around what was found.
  function searchHitElement(hit, q) {
    const { message, conversation: where } = hit;
    const button = el("button", "hit");
    button.type = "button";
    button.dataset.id = message.id;
    const meta = el("span", "hit-meta");
    const place = where.room_id ? "# " + (where.room_name || "room")
      : "direct with " + (where.with ? where.with.username : "?");
    meta.append(el("span", "author", message.sender.username), el("span", "where", place),
      el("time", null, formatTime(message.created_at)));
    const body = el("span", "hit-body");
    body.append(...highlighted(snippet(message.body, q), q));
    button.append(meta, body);
    button.addEventListener("click", () => openSearchHit(hit));
    const li = el("li");
    li.append(button);
    return li;
  }

  function wordsPattern(q) {
    const words = q.split(/\s+/).filter(Boolean).sort((a, b) => b.length - a.length);
    return new RegExp(words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"), "giu");
  }

  // Up to about 160 characters of the body, from a little before the first word found.
  function snippet(body, q) {
    const chars = Array.from(body); // whole code points: an emoji is never cut in two
    const first = body.search(wordsPattern(q));
    const start = first > 60 ? Array.from(body.slice(0, first)).length - 40 : 0;
    const end = Math.min(chars.length, start + 160);
    return (start ? "…" : "") + chars.slice(start, end).join("") + (end < chars.length ? "…" : "");
  }

  // Text nodes, with each word of the query in a <mark>.
  function highlighted(text, q) {
    const nodes = [];
    let last = 0;
    for (const match of text.matchAll(wordsPattern(q))) {
      if (!match[0]) continue;
      nodes.push(text.slice(last, match.index), el("mark", null, match[0]));
      last = match.index + match[0].length;
    }
    nodes.push(text.slice(last));
    return nodes;
  }

  async function openSearchHit(hit) {
    const where = hit.conversation;
    const target = where.room_id
      ? { kind: "room", id: where.room_id, name: where.room_name }
      : { kind: "dm", name: where.with.username };
    let conv = state.current;
    if (conv && conv.key === keyOf(target)) {
      $("chat-view").dataset.pane = "chat";
      markShownRead();
    } else {
      conv = openConversation(target, true);
    }
    await revealMessage(conv, hit.message.id);
  }

  // Shows a message of the open conversation: older pages are loaded until it is there (at
  // most MAX_JUMP_PAGES), then it is scrolled to, focused and highlighted for a moment.
  async function revealMessage(conv, id) {
    if (conv.loading) await conv.loading;
    for (let pages = 0; !conv.messages.has(id) && conv.next && pages < MAX_JUMP_PAGES; pages += 1) {
      if (state.current !== conv || !(await loadHistory(conv, conv.next))) break;
    }
    if (state.current !== conv) return;
    const li = messageNode(id);
    if (!li) {
      showError("composer-error", new Error("That message is too far back to show here."));
      return;
    }
    li.tabIndex = -1;
    li.scrollIntoView({ block: "center" });
    li.focus({ preventScroll: true });
    li.classList.add("flash");
    setTimeout(() => messageNode(id)?.classList.remove("flash"), FLASH_MS);
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
      } else if (!data.resumed && state.current) {
        catchUp(state.current);
      }
    });
    on("message", onLiveMessage);
    on("message_edited", onLiveUpdate);
    on("message_deleted", onLiveUpdate);
    on("reaction", (data) => {
      if (state.current) applyReaction(state.current, data);
    });
    on("read", onReadEvent);
    on("typing", onTyping);
    on("presence", (data) => {
      state.userNames.set(data.user_id, data.username);
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

  function rememberUsers(message) {
    state.userNames.set(message.sender.id, message.sender.username);
    if (message.to) state.userNames.set(message.to.id, message.to.username);
  }

  function onLiveMessage(message) {
    const target = conversationOf(message);
    const key = keyOf(target);
    const mine = message.sender.id === state.me.id;
    rememberUsers(message);
    stopTyping(key, message.sender.id);
    if (target.kind === "dm") rememberDm(target.name);
    const conv = state.current;
    if (conv && conv.key === key) {
      const stick = mine || nearBottom();
      if (addMessage(conv, message)) {
        if (stick) scrollToBottom();
        if (!mine) announce(message.sender.username + ": " + message.body);
        if (!mine && !isShown()) countUnread(key, message);
        markShownRead();
      }
    } else if (!mine) {
      countUnread(key, message);
      const room = target.kind === "room" && state.rooms.find((r) => r.id === target.id);
      announce("New message from " + message.sender.username + (room ? " in #" + room.name : ""));
    }
  }

  // An edit or a deletion: the open conversation shows the message as it is now; others
  // read it with their history.
  function onLiveUpdate(message) {
    const conv = state.current;
    if (conv && conv.key === keyOf(conversationOf(message))) applyUpdate(conv, message);
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
    $("composer-input").addEventListener("input", onComposerInput);
    $("search-form").addEventListener("submit", onSearch);
    $("search-more").addEventListener("click", () => state.search && loadSearchPage(state.search));
    $("search-close").addEventListener("click", () => {
      closeSearch();
      $("search-input").value = "";
      $("search-input").focus();
    });
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
      if (document.visibilityState !== "visible" || !state.token) return;
      refreshSide();
      markShownRead();
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
