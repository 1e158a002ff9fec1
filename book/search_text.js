/* The course site's search page (book/build_site.py stages this file; _config.yml loads it): a result's
   snippet is the page's text, where math is still TeX source (MathJax typesets the page, not the text the
   search reads). This rewrites each formula of that text into plain symbols, e.g. \(\frac{p-1}{m+p-1}\) into
   (p-1)/(m+p-1), so a snippet reads as the page does. */
(() => {
  const plain = (tex) => {
    let text = tex.replace(/^\s*(\\\(|\\\[|\$\$?)/, "").replace(/(\\\)|\\\]|\$\$?)\s*$/, "");
    for (let i = 0; i < 4; i++) {
      text = text.replace(/\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "($1)/($2)");
    }
    const symbols = {cdot: "·", times: "×", le: "≤", leq: "≤", ge: "≥", geq: "≥", approx: "≈", ne: "≠",
                     to: "→", infty: "∞", ldots: "…", dots: "…", sum: "Σ", min: "min", max: "max"};
    text = text.replace(/\\([a-zA-Z]+)/g, (whole, name) => symbols[name] ?? name);
    return text.replace(/[{}]/g, "").replace(/\\[,;! ]/g, " ").replace(/\s+/g, " ").trim();
  };
  const patch = () => {
    // searchtools.js declares Search with const: a global name, but not a property of window.
    if (typeof Search === "undefined" || !Search.htmlToText || Search.htmlToText.plainMath) return;
    const original = Search.htmlToText;
    Search.htmlToText = (htmlString, anchor) => {
      const html = new DOMParser().parseFromString(htmlString, "text/html");
      html.querySelectorAll(".math").forEach((el) => { el.textContent = plain(el.textContent); });
      return original(html.documentElement.outerHTML, anchor);
    };
    Search.htmlToText.plainMath = true;
  };
  patch();
  document.addEventListener("DOMContentLoaded", patch);
})();
