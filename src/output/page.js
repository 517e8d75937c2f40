"use strict";
(() => {
  // From the origin, never the document's URL: one opened with user:password@ would make
  // every fetch refuse to start.
  const API = location.origin + "/api/v1/sockets";
  const COLUMNS = [["state", "state"], ["local", "local"], ["peer", "peer"], ["pid", "pid"],
    ["fd", "fd"], ["inode", "inode"], ["recv_q", "Recv-Q"], ["unread_bytes", "unread"],
    ["send_q", "Send-Q"], ["age", "age"], ["queue", "accept queue"]];
  document.body.dataset.parsedMs = performance.now().toFixed(1);
  const expanded = new Set();
  let sorted = null;

  const cell = (row, tag, text) => {
    const c = document.createElement(tag);
    c.textContent = text;
    row.appendChild(c);
  };
  const age = (s) => s.age_seconds == null ? "-"
    : (s.age_exact ? "" : ">") + (s.age_seconds >= 120 ? Math.round(s.age_seconds / 60) + "m"
      : s.age_seconds.toFixed(1) + "s");
  const value = (s, key) => key === "age" ? age(s)
    : key === "queue" ? (s.in_accept_queue ? "yes" : "-")
    : s[key] == null ? "-" : String(s[key]);

  function socketTable(answer) {
    const table = document.createElement("table");
    table.className = "sockets";
    const caption = document.createElement("caption");
    caption.textContent = answer.returned + " of " + answer.matched +
      " CLOSE_WAIT sockets, oldest first (ages with > are lower bounds)";
    table.appendChild(caption);
    const head = table.createTHead().insertRow();
    COLUMNS.forEach(([, title]) => cell(head, "th", title));
    const body = table.createTBody();
    answer.sockets.forEach((s) => {
      const row = body.insertRow();
      row.className = "socket";
      COLUMNS.forEach(([key]) => cell(row, "td", value(s, key)));
    });
    return table;
  }

  // Fetches the group's sockets, then shows them; `quiet` (a refresh re-opening it)
  // keeps the old rows until the new ones are there.
  async function expand(group, quiet) {
    expanded.add(group.id);
    group.querySelector("button.expand").textContent = "hide";
    const detail = () => {
      let row = group.querySelector("tr.sockets");
      if (!row) {
        row = group.insertRow();
        row.className = "sockets";
        row.insertCell().colSpan = 13;
      }
      return row.cells[0];
    };
    if (!quiet) detail().textContent = "loading...";
    let shown;
    try {
      const r = await fetch(API + "?" + group.dataset.query + "&limit=100",
        { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) throw new Error(await r.text());
      shown = socketTable(await r.json());
    } catch (e) {
      shown = document.createTextNode("cannot load the sockets: " + e.message);
    }
    if (!expanded.has(group.id)) return;
    const target = detail();
    target.textContent = "";
    target.appendChild(shown);
  }

  function collapse(group) {
    expanded.delete(group.id);
    const detail = group.querySelector("tr.sockets");
    if (detail) detail.remove();
    group.querySelector("button.expand").textContent = "sockets";
  }

  function sortBy(th, direction) {
    const table = th.closest("table");
    const index = th.cellIndex;
    const groups = Array.from(table.tBodies);
    const key = (g) => g.rows[0].cells[index];
    const numeric = key(groups[0]).hasAttribute("data-v");
    groups.sort((a, b) => {
      const x = key(a), y = key(b);
      const order = numeric ? Number(x.dataset.v) - Number(y.dataset.v)
        : x.textContent.localeCompare(y.textContent);
      return direction === "asc" ? order : -order;
    });
    groups.forEach((g) => table.appendChild(g));
    table.querySelectorAll("th").forEach((h) => h.classList.remove("asc", "desc"));
    th.classList.add(direction);
    sorted = { column: th.textContent, index: th.cellIndex, direction };
  }

  function reapply() {
    if (sorted) {
      document.querySelectorAll("table.groups").forEach((table) => {
        const th = table.tHead.rows[0].cells[sorted.index];
        if (th) sortBy(th, sorted.direction);
      });
    }
    return Promise.all(Array.from(expanded).map((id) => {
      const group = document.getElementById(id);
      return group ? expand(group, true) : (expanded.delete(id), null);
    }));
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.expand");
    if (button) {
      const group = button.closest("tbody.group");
      return expanded.has(group.id) ? collapse(group) : expand(group);
    }
    const th = event.target.closest("table.groups > thead th");
    if (th && th.textContent) {
      const again = th.classList.contains("desc");
      sortBy(th, again ? "asc" : "desc");
    }
  });

  async function refresh() {
    try {
      const r = await fetch(location.origin + location.pathname,
        { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) return;
      const page = new DOMParser().parseFromString(await r.text(), "text/html");
      const live = page.getElementById("live");
      if (live) {
        document.getElementById("live").replaceWith(document.adoptNode(live));
        await reapply();
      }
    } finally {
      setTimeout(refresh, Number(document.body.dataset.refresh || 15) * 1000);
    }
  }

  // #expand-all, or #expand=ID: a link that opens with groups expanded.
  const hash = decodeURIComponent(location.hash.slice(1));
  const first = hash === "expand-all"
    ? Array.from(document.querySelectorAll("tbody.group[data-query]:not([data-query=''])")).slice(0, 20)
    : hash.startsWith("expand=") ? [document.getElementById(hash.slice(7))].filter(Boolean) : [];
  Promise.all(first.map((group) => expand(group, false))).then(() => {
    document.body.dataset.renderedMs = performance.now().toFixed(1);
    setTimeout(refresh, Number(document.body.dataset.refresh || 15) * 1000);
  });
})();
