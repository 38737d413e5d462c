// The before/after slider: the only part of the page that needs JavaScript. Without it the crops stay side by side.
document.querySelectorAll("[data-compare]").forEach(function (box) {
  var after = box.querySelector(".after");
  var range = box.querySelector("input[type=range]");
  function show() { after.style.clipPath = "inset(0 " + (100 - range.value) + "% 0 0)"; }
  range.addEventListener("input", show);
  show();
  box.hidden = false;
});
