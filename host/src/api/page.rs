//! `GET /`: a page to try pixbox in a browser (drop images, follow their jobs, see every
//! rendition), plain HTML, CSS and JavaScript embedded in the binary: no build step, no assets.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiState;

/// The page; `/*ROUTES*/[]` is replaced by the configured routes, `/*PRESETS*/[]` by the presets'
/// names.
const PAGE: &str = include_str!("page/index.html");

#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, description = "A page to try pixbox: upload images and watch their renditions appear (calls the API with the key typed into it)", content_type = "text/html")),
)]
pub async fn page(State(state): State<ApiState>) -> Response {
    let mut routes: Vec<serde_json::Value> = state
        .routes
        .iter()
        .map(|r| serde_json::json!({ "prefix": r.prefix, "renditions": r.rendition_names().names }))
        .collect();
    if !state.routes.iter().any(|r| r.prefix.is_empty()) {
        let names = crate::sandbox::rendition_names(&[], "").names;
        routes.insert(0, serde_json::json!({ "prefix": "", "renditions": names }));
    }
    // Inside a <script>: no `<` may reach the HTML parser (a `</script>` in a name would end it).
    let json = serde_json::Value::from(routes).to_string().replace('<', "\\u003c");
    let presets: Vec<&str> = state.renderer.iter().flat_map(|r| r.names()).collect();
    let presets = serde_json::to_string(&presets).expect("names serialize").replace('<', "\\u003c");
    let html = PAGE.replacen("/*ROUTES*/[]", &json, 1).replacen("/*PRESETS*/[]", &presets, 1);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], html).into_response()
}
