// The API page's Swagger UI (service/static/api.html, served at /): BentoML's own initializer,
// plus the API key that the /ui/ page keeps in this tab's sessionStorage (service/static/ui.js),
// sent with every request the page makes, /docs.json included.
window.onload = function () {
  const key = sessionStorage.getItem("convzoo-api-key");
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
    requestInterceptor: (request) => {
      if (key) request.headers.Authorization = `Bearer ${key}`;
      return request;
    },
  });
};
