// banger's web UI: the live parts. Every page works without this file; it only follows
// long operations' stages and console logs as they happen (server-sent events).
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function followJob(list) {
  const outcome = document.getElementById("outcome");
  const cancel = document.getElementById("cancel");
  const seen = list.children.length;
  const es = new EventSource(list.dataset.events);
  es.addEventListener("stage", (ev) => {
    if (Number(ev.lastEventId) < seen) return; // already on the page
    const s = JSON.parse(ev.data);
    const li = el("li");
    li.append(el("span", "stage", s.stage));
    if (s.detail) li.append(" ", el("span", "detail", s.detail));
    li.append(" ", el("span", "dim", (s.elapsed_ms / 1000).toFixed(1) + "s"));
    list.append(li);
  });
  es.addEventListener("done", (ev) => {
    es.close();
    const o = JSON.parse(ev.data);
    outcome.replaceChildren();
    if (o.ok) {
      const box = el("div", "done");
      const p = el("p");
      p.append(el("strong", null, o.summary));
      box.append(p);
      if (o.href) {
        const a = el("a", "button primary", "Open");
        a.href = o.href;
        const q = el("p");
        q.append(a);
        box.append(q);
      }
      outcome.append(box);
    } else {
      const box = el("div", "error");
      box.setAttribute("role", "alert");
      const p = el("p");
      p.append(el("strong", null, o.kind + ": "), o.message);
      box.append(p);
      if (o.op_id) {
        const q = el("p", "dim", "op ");
        q.append(el("code", null, o.op_id));
        box.append(q);
      }
      outcome.append(box);
    }
    if (cancel) cancel.remove();
  });
}

function followLog(pre) {
  const es = new EventSource(pre.dataset.events);
  es.addEventListener("chunk", (ev) => {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.append(JSON.parse(ev.data));
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  });
  pre.scrollTop = pre.scrollHeight;
}

document.addEventListener("DOMContentLoaded", () => {
  const stages = document.getElementById("stages");
  if (stages && stages.dataset.events && document.getElementById("running")) followJob(stages);
  const log = document.getElementById("log");
  if (log && log.dataset.events) followLog(log);
});
