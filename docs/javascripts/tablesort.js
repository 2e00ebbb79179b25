// Click a column header of a table marked `sortable` to sort by it; click again to reverse.
// Numbers sort numerically, everything else by text. Works with Material's instant navigation.
(function () {
  function cellValue(row, index) {
    var cell = row.cells[index];
    var text = cell ? (cell.getAttribute("data-sort") || cell.textContent).trim() : "";
    var number = parseFloat(text.replace(/[, ]/g, ""));
    return isNaN(number) || !/^[-+]?[\d., ]+[%x]?$/.test(text) ? text.toLowerCase() : number;
  }
  function sortBy(table, index, header) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var descending = header.getAttribute("aria-sort") === "ascending";
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  function enable() {
    document.querySelectorAll("div.sortable table, table.sortable").forEach(function (table) {
      if (!table.tHead || table.getAttribute("data-sortable-ready")) return;
      table.setAttribute("data-sortable-ready", "1");
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
        header.style.cursor = "pointer";
        header.title = "Sort";
        header.addEventListener("click", function () { sortBy(table, index, header); });
      });
    });
  }
  if (typeof document$ !== "undefined") { document$.subscribe(enable); } else { document.addEventListener("DOMContentLoaded", enable); }
})();
