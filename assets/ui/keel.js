// keel's dashboard script: live fragments and the live tail over one EventSource per tab,
// table refreshes, UTC or relative times, confirmations and copy buttons. Pages read without it;
// it only keeps them fresh. No third-party code, no inline script (see the CSP).
"use strict";

(function () {
  const keel = (window.keel = { charts: {}, tailed: 0, errors: [] });

  // Times: every <time datetime> reads as UTC or as "3 min ago"; the choice is remembered.
  function relative(date) {
    const s = Math.round((Date.now() - date.getTime()) / 1000);
    const abs = Math.abs(s);
    const unit = abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.round(abs / 60), "min"]
      : abs < 86400 ? [Math.round(abs / 3600), "h"] : [Math.round(abs / 86400), "d"];
    return s >= 0 ? unit[0] + " " + unit[1] + " ago" : "in " + unit[0] + " " + unit[1];
  }
  function times(root) {
    const mode = localStorage.getItem("keel.time") || "utc";
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      if (!t.dataset.utc) t.dataset.utc = t.textContent;
      t.textContent = mode === "ago" ? relative(d) : t.dataset.utc;
      t.title = mode === "ago" ? t.dataset.utc : relative(d);
    });
  }

  // Charts: how many points each draws, for anyone who asks (tests, curious people).
  function charts(root) {
    root.querySelectorAll("svg.chart[id]").forEach(function (svg) {
      keel.charts[svg.id] = Number(svg.dataset.points || 0);
    });
  }

  function refreshed(root) {
    times(root);
    charts(root);
  }

  function live() {
    const frag = document.querySelector("[data-live]");
    const tail = document.querySelector("[data-tail]");
    const url = frag ? frag.dataset.live : tail ? tail.dataset.tail : null;
    if (!url || !window.EventSource) return;
    const source = new EventSource(url);
    keel.source = source;
    source.addEventListener("fragment", function (e) {
      const msg = JSON.parse(e.data);
      const el = document.getElementById(msg.id);
      if (!el) return;
      el.innerHTML = msg.html;
      refreshed(el);
    });
    source.addEventListener("rows", function (e) {
      const body = document.getElementById(tail.dataset.target);
      if (!body) return;
      const holder = document.createElement("tbody");
      holder.innerHTML = e.data;
      const rows = Array.from(holder.children);
      rows.reverse().forEach(function (row) {
        row.classList.add("new");
        body.insertBefore(row, body.firstChild);
      });
      keel.tailed += rows.length;
      document.querySelectorAll('[data-empty-for="' + tail.dataset.target + '"]').forEach(function (p) {
        p.hidden = true;
      });
      while (body.children.length > 500) body.removeChild(body.lastChild);
      refreshed(body);
    });
    source.onerror = function () {
      document.body.classList.add("offline");
    };
    source.onopen = function () {
      document.body.classList.remove("offline");
    };
  }

  // Tables that refresh: <div data-refresh="/ui/…?fragment=1" data-every="5"> is replaced by
  // what that address returns, every so many seconds, while the tab is visible.
  function refreshers() {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      const every = 1000 * Number(el.dataset.every || 5);
      setInterval(function () {
        if (document.hidden) return;
        fetch(el.dataset.refresh, { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
          .then(function (html) { el.innerHTML = html; refreshed(el); })
          .catch(function () { document.body.classList.add("offline"); });
      }, every);
    });
  }

  // Forms that ask first: data-confirm="question". A typed confirmation (the server insists
  // on it above its threshold) is an input the person fills in themselves.
  function confirms() {
    document.addEventListener("submit", function (e) {
      const form = e.target;
      const question = form.dataset && form.dataset.confirm;
      if (question && !window.confirm(question)) e.preventDefault();
    });
  }

  function copies() {
    document.addEventListener("click", function (e) {
      const el = e.target.closest("[data-copy]");
      if (!el || !navigator.clipboard) return;
      navigator.clipboard.writeText(el.dataset.copy || el.textContent.trim());
      el.classList.add("copied");
      setTimeout(function () { el.classList.remove("copied"); }, 800);
    });
    const toggle = document.querySelector("[data-toggle-time]");
    if (toggle) {
      toggle.addEventListener("click", function () {
        const next = (localStorage.getItem("keel.time") || "utc") === "utc" ? "ago" : "utc";
        localStorage.setItem("keel.time", next);
        times(document);
      });
    }
  }

  window.addEventListener("error", function (e) { keel.errors.push(String(e.message)); });
  document.addEventListener("DOMContentLoaded", function () {
    refreshed(document);
    live();
    refreshers();
    confirms();
    copies();
    setInterval(function () { times(document); }, 10000);
  });
})();
