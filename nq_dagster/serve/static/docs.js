// Swagger UI on the server's own OpenAPI document (vendored, no CDN). "Authorize" takes an API key or a JWT.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
  validatorUrl: null, // the default calls validator.swagger.io: the docs stay offline
});
