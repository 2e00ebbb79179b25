// Sortable tables (inside `div.sortable`, or `table.sortable`): each header holds a button; press it
// (mouse, Enter or Space) to sort by that column, again to reverse. The header's aria-sort says the
// state ("none", "ascending", "descending") and the stylesheet draws it. Numbers sort as numbers,
// thousands separators included (thin, narrow no-break and no-break spaces, commas), and a value
// with its interval ("12.3 ± 1.2") sorts by the value. Every table
// cell also gets a data-label (its column's header), which the phone layout shows beside the value.
// Works with Material's instant navigation.
(function () {
  var SEPARATORS = /[,\s\u00a0\u2009\u202f]/g;
  // A number, optionally followed by "± interval" (sorted by the number) and a unit sign.
  var NUMBER = /^[-+\u2212]?[\d.,\s\u00a0\u2009\u202f]*\d[\d.,\s\u00a0\u2009\u202f]*(\u00b1[\d.,\s\u00a0\u2009\u202f]*\d[\d.,\s\u00a0\u2009\u202f]*)?\s*(%|x|\u00d7)?$/;

  function cellValue(row, index) {
    var cell = row.cells[index];
    var text = cell ? (cell.getAttribute("data-sort") || cell.textContent).trim() : "";
    if (NUMBER.test(text)) {
      var number = parseFloat(text.replace(SEPARATORS, "").replace("\u2212", "-"));
      if (!isNaN(number)) return number;
    }
    return text.toLowerCase();
  }

  function compare(x, y) {
    if (typeof x === "number" && typeof y === "number") return x - y;
    if (typeof x === "number") return -1;  // numbers before text ("", "—")
    if (typeof y === "number") return 1;
    return x < y ? -1 : x > y ? 1 : 0;
  }

  function sortBy(table, index, header) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var descending = header.getAttribute("aria-sort") === "ascending";
    var keyed = rows.map(function (row, position) { return [cellValue(row, index), position, row]; });
    keyed.sort(function (a, b) { return (compare(a[0], b[0]) || a[1] - b[1]) * (descending ? -1 : 1); });
    keyed.forEach(function (item) { body.appendChild(item[2]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.setAttribute("aria-sort", "none"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  function makeSortable(table) {
    if (!table.tHead || !table.tBodies.length || table.getAttribute("data-sortable-ready")) return;
    table.setAttribute("data-sortable-ready", "1");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "atlas-sort";
      while (header.firstChild) button.appendChild(header.firstChild);
      button.setAttribute("title", "Sort by this column");
      header.appendChild(button);
      header.setAttribute("aria-sort", "none");
      button.addEventListener("click", function () { sortBy(table, index, header); });
    });
  }

  function labelCells(table) {
    if (!table.tHead || table.getAttribute("data-labelled")) return;
    table.setAttribute("data-labelled", "1");
    var labels = Array.prototype.map.call(table.tHead.rows[0].cells, function (cell) { return cell.textContent.trim(); });
    Array.prototype.forEach.call(table.tBodies, function (body) {
      Array.prototype.forEach.call(body.rows, function (row) {
        Array.prototype.forEach.call(row.cells, function (cell, index) {
          if (labels[index]) cell.setAttribute("data-label", labels[index]);
        });
      });
    });
  }

  function enable() {
    document.querySelectorAll(".md-typeset table").forEach(labelCells);
    document.querySelectorAll("div.sortable table, table.sortable").forEach(makeSortable);
  }

  window.atlasTables = { makeSortable: makeSortable, labelCells: labelCells };
  if (typeof document$ !== "undefined") { document$.subscribe(enable); } else { document.addEventListener("DOMContentLoaded", enable); }
})();
