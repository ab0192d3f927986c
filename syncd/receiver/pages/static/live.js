// Live updates of a share page: Server-Sent Events carry server-rendered (escaped) HTML for
// each changed item; `id` is the item's sequence number, so a reconnect (the browser's own,
// with Last-Event-ID, or ours after the stream was closed) resumes where the page left off.
"use strict";

(function () {
  const body = document.body;
  const source = body.dataset.events;
  if (!source || !window.EventSource) return;
  let seen = Number(body.dataset.seq) || 0;
  let delay = 1000;
  const status = document.getElementById("live");

  function show(state, text) {
    if (!status) return;
    status.hidden = false;
    status.className = "live " + state;
    status.textContent = text;
  }

  function element(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    return template.content.firstElementChild;
  }

  // What the reader opened stays open when a piece is replaced.
  function keepOpen(from, to) {
    const before = from.querySelectorAll("details");
    const after = to.querySelectorAll("details");
    if (before.length !== after.length) return;
    before.forEach((d, i) => { after[i].open = d.open; });
  }

  // Put `node` into `container` in id order, replacing the element with its id.
  function place(container, node) {
    const old = document.getElementById(node.id);
    if (old) {
      keepOpen(old, node);
      old.replaceWith(node);
      return;
    }
    let next = null;
    for (const child of container.children) {
      if (child.dataset.id > node.dataset.id) { next = child; break; }
    }
    container.insertBefore(node, next);
    node.classList.add("fresh");
  }

  function message(html) {
    const node = element(html);
    const old = document.getElementById(node.id);
    if (old) {
      const parts = node.querySelector(".parts");
      for (const part of Array.from(old.querySelector(".parts").children)) parts.appendChild(part);
    }
    place(document.getElementById("messages"), node);
    return document.getElementById(node.id);
  }

  function replace(id, html) {
    const old = document.getElementById(id);
    if (old) {
      const node = element(html);
      keepOpen(old, node);
      old.replaceWith(node);
    }
  }

  const handlers = {
    session(data) { replace("session-head", data.html); },
    totals(data) { replace("session-totals", data.html); },
    message(data) { message(data.html); },
    part(data) {
      if (!data.html) return; // a part with nothing to show (a step marker)
      const owner = document.getElementById(data.message) || message(data.shell);
      place(owner.querySelector(".parts"), element(data.html));
    },
    session_diff(data) { replace("changes", data.html); },
    model() {},
  };

  function connect() {
    const url = source + (source.includes("?") ? "&" : "?") + "after=" + seen;
    const events = new EventSource(url);
    events.onopen = () => { delay = 1000; show("on", "live"); };
    for (const [name, handle] of Object.entries(handlers)) {
      events.addEventListener(name, (event) => {
        handle(JSON.parse(event.data));
        if (event.lastEventId) seen = Math.max(seen, Number(event.lastEventId) || 0);
      });
    }
    events.addEventListener("gone", () => {
      events.close();
      show("off", "share deleted");
    });
    events.onerror = () => {
      show("off", "reconnecting");
      // The browser retries a dropped stream by itself; one it gave up on (an error answer,
      // say while the server restarts) is opened again here, from the last item seen.
      if (events.readyState === EventSource.CLOSED) {
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 15000);
      }
    };
  }

  connect();
})();
