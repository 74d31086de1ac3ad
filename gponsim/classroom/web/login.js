"use strict";
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("error").textContent = BOOT.error || "";
  document.getElementById("user").focus();
});
