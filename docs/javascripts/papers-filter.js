// The "All papers" filter: reads the compact index named by the form's data-index, keeps the
// filters in the query string (so a view is a shareable link) and writes the matching rows with
// DOM text nodes only: nothing from the data is ever parsed as HTML.
(function () {
  var cache = {};

  function load(url) {
    if (!cache[url]) {
      cache[url] = fetch(url).then(function (response) {
        if (!response.ok) throw new Error("cannot load " + url);
        return response.json();
      });
    }
    return cache[url];
  }

  function fold(text) {
    return String(text).normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase();
  }

  function readForm(form) {
    var data = new FormData(form), state = {};
    data.forEach(function (value, name) { if (String(value).trim()) state[name] = String(value).trim(); });
    return state;
  }

  function writeForm(form, params) {
    Array.prototype.forEach.call(form.elements, function (field) {
      if (!field.name) return;
      var value = params.get(field.name);
      if (field.type === "checkbox") field.checked = value === field.value;
      else if (value !== null) field.value = value;
    });
  }

  function matches(paper, state, words) {
    if (state.y0 && paper.y < Number(state.y0)) return false;
    if (state.y1 && paper.y > Number(state.y1)) return false;
    if (state.venue && paper.v !== state.venue) return false;
    if (state.family && paper.f.indexOf(state.family) < 0) return false;
    if (state.code && !paper.c) return false;
    if (state.impl && !paper.i) return false;
    if (state.tf && !paper.tf) return false;
    if (words.length) {
      var haystack = paper._text || (paper._text = fold([paper.t, paper.a, paper.v, paper.k, (paper.n || []).join(" "), paper.p].join(" ")));
      for (var i = 0; i < words.length; i++) if (haystack.indexOf(words[i]) < 0) return false;
    }
    return true;
  }

  function cell(row, content) {
    var td = document.createElement("td");
    if (content instanceof Node) td.appendChild(content); else td.textContent = content === undefined ? "" : String(content);
    row.appendChild(td);
    return td;
  }

  function anchor(text, href, className) {
    var a = document.createElement("a");
    a.textContent = text;
    a.setAttribute("href", href);
    if (className) a.className = className;
    return a;
  }

  function render(root, index, state) {
    var words = fold(state.q || "").split(/\s+/).filter(Boolean);
    var shown = index.papers.filter(function (paper) { return matches(paper, state, words); });
    var count = root.querySelector("#atlas-filter-count");
    count.textContent = shown.length + " of " + index.papers.length + " papers";
    var table = document.createElement("table");
    table.className = "sortable atlas-papers";
    var head = table.createTHead().insertRow();
    ["Year", "Title", "Venue", "Family", "Code", "Here"].forEach(function (label) {
      var th = document.createElement("th");
      th.textContent = label;
      head.appendChild(th);
    });
    var body = table.createTBody();
    shown.forEach(function (paper) {
      var row = body.insertRow();
      cell(row, paper.y);
      var title = document.createElement("span");
      title.appendChild(anchor(paper.t, "../papers/" + encodeURIComponent(paper.k) + "/"));
      if (paper.n && paper.n.length) {
        var aka = document.createElement("span");
        aka.className = "atlas-aka";
        aka.textContent = " (" + paper.n.join(", ") + ")";
        title.appendChild(aka);
      }
      var authors = document.createElement("small");
      authors.textContent = paper.a ? " " + paper.a : "";
      title.appendChild(authors);
      cell(row, title);
      cell(row, paper.v);
      cell(row, paper.p);
      cell(row, paper.c && /^https?:\/\//.test(paper.c) ? anchor("code", paper.c) : "");
      cell(row, paper.i ? anchor("implemented here", "../implementations/" + encodeURIComponent(paper.i) + "/", "atlas-badge") : "");
    });
    var results = root.querySelector("#atlas-filter-results");
    results.replaceChildren(table);
    if (window.atlasTables) { window.atlasTables.makeSortable(table); window.atlasTables.labelCells(table); }
  }

  function update(form, index, push) {
    var state = readForm(form);
    var params = new URLSearchParams(state);
    var query = params.toString();
    if (push !== false) history.replaceState(history.state, "", query ? "?" + query : location.pathname);
    render(document, index, state);
  }

  function enable() {
    var form = document.getElementById("atlas-filter");
    if (!form || form.getAttribute("data-ready")) return;
    form.setAttribute("data-ready", "1");
    writeForm(form, new URLSearchParams(location.search));
    load(new URL(form.getAttribute("data-index"), location.href).href).then(function (index) {
      var timer = null;
      form.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(function () { update(form, index); }, 80); });
      form.addEventListener("change", function () { update(form, index); });
      form.addEventListener("reset", function () { setTimeout(function () { update(form, index); }, 0); });
      form.addEventListener("submit", function (event) { event.preventDefault(); update(form, index); });
      update(form, index, false);
    }).catch(function (error) {
      document.getElementById("atlas-filter-count").textContent = "The list could not be loaded (" + error.message + ").";
    });
  }

  if (typeof document$ !== "undefined") { document$.subscribe(enable); } else { document.addEventListener("DOMContentLoaded", enable); }
})();
