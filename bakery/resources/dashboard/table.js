// Sorting (click a header) and filtering (the search box) of bakery's tables. The pages read fine without it.
(function () {
  "use strict";
  function text(cell) { return (cell && cell.textContent || "").trim(); }
  document.querySelectorAll("table.sortable thead th").forEach(function (th, index) {
    th.setAttribute("data-sort", th.getAttribute("data-sort") || "text");
    th.addEventListener("click", function () {
      var table = th.closest("table"), body = table.tBodies[0];
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      table.querySelectorAll("thead th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        return dir * text(a.cells[index]).localeCompare(text(b.cells[index]), undefined, {numeric: true});
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var filter = document.getElementById("filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase(), table = document.getElementById(filter.getAttribute("data-table"));
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  }
  document.querySelectorAll("code.digest").forEach(function (el) {
    el.addEventListener("click", function () {
      if (navigator.clipboard) { navigator.clipboard.writeText(el.getAttribute("title")).catch(function () {}); }
    });
  });
}());
