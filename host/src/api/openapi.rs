//! The OpenAPI 3 document of the api, generated from the handlers' annotations and served at
//! `GET /openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{direct, download, health, images, img, live, page, upload};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pixbox",
        description = "Image upload-and-resize service: upload images, a worker transforms them in a \
                       WebAssembly sandbox every 10 seconds, download the results. Errors are JSON \
                       `{code, message}` with a stable kebab-case `code`. Every answer carries an \
                       `X-Request-Id` header (the request's own when it sends a sane one), which \
                       the server's log lines for that request name."
    ),
    paths(
        upload::upload,
        direct::create,
        direct::put,
        direct::complete,
        download::download_by_path,
        download::download_by_query,
        download::status_by_path,
        download::status_by_query,
        live::events,
        images::delete_image,
        img::preset,
        img::transform,
        health::health,
        health::ready,
        page::page,

        openapi_json,
    ),
    modifiers(&BearerKey),
    tags(
        (name = "images", description = "Upload, status and download"),
        (name = "operations", description = "Health, readiness and this document"),
    )
)]
pub struct ApiDoc;

/// The `apiKey` scheme the paths refer to: `Authorization: Bearer <key>`.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(
            "An API key from `pixbox keys new`. Uploads need the `upload` scope; reads need the `read` \
             scope when `[auth] reads` is `key`, or a signed URL when it is `signed`. Without any \
             key configured pixbox is open, and serves only on loopback."
                .into(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("apiKey", SecurityScheme::Http(http));
    }
}

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is in the document, with its method; and nothing else is.
    #[test]
    fn every_served_route_is_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let served = crate::api::served_routes();
        for (method, path) in &served {
            // axum's catch-all `{*key}` is the OpenAPI path parameter `{key}`.
            let documented_path = path.replace("{*", "{");
            let method = method.as_str().to_ascii_lowercase();
            assert!(
                paths.get(&documented_path).and_then(|p| p.get(&method)).is_some(),
                "{method} {documented_path} is served but not in the OpenAPI document"
            );
        }
        let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(documented, served.len(), "the document describes routes the router does not serve");
        // Uploads need a key; reads may go without one (public or signed).
        assert_eq!(doc["paths"]["/upload"]["post"]["security"], serde_json::json!([{"apiKey": []}]));
        assert_eq!(doc["paths"]["/download/{key}"]["get"]["security"], serde_json::json!([{}, {"apiKey": []}]));
        assert_eq!(doc["components"]["securitySchemes"]["apiKey"]["scheme"], "bearer");
        // Error bodies are described.
        assert!(doc["components"]["schemas"]["ApiError"]["properties"]["code"].is_object());
        // Renditions: named in the upload answer and in the status, selectable on download.
        assert!(doc["components"]["schemas"]["Uploaded"]["properties"]["renditions"].is_object(), "{doc}");
        assert!(doc["components"]["schemas"]["RenditionStatus"]["properties"]["width"].is_object(), "{doc}");
        let params = doc["paths"]["/download/{key}"]["get"]["parameters"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "rendition"), "{params:?}");
        assert!(params.iter().any(|p| p["name"] == "Accept" && p["in"] == "header"), "{params:?}");
        // Live status: the wait parameter and the event stream.
        let params = doc["paths"]["/status/{key}"]["get"]["parameters"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "wait"), "{params:?}");
        assert!(
            doc["paths"]["/events"]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object(),
            "{doc}"
        );
    }

    /// Every code a response's description names (in backticks) is a code of the table, at the
    /// status it is described under: the document cannot promise a code the api does not send.
    #[test]
    fn the_documented_codes_are_the_tables() {
        use crate::api::Code;
        let doc = serde_json::to_value(document()).unwrap();
        let mut named = 0;
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, operation) in methods.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    // Success answers may name other things in backticks (event names, scopes).
                    if !status.starts_with(['4', '5']) {
                        continue;
                    }
                    let description = response["description"].as_str().unwrap_or_default();
                    for token in description.split('`').skip(1).step_by(2) {
                        let looks_like_a_code = token.contains('-')
                            && token.split('-').all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()));
                        match Code::ALL.iter().find(|code| code.as_str() == token) {
                            Some(code) => {
                                named += 1;
                                assert_eq!(code.status().as_str(), status, "{method} {path}: `{token}` under {status}");
                            }
                            None => assert!(!looks_like_a_code, "{method} {path}: `{token}` is not an error code"),
                        }
                    }
                }
            }
        }
        assert!(named > 20, "only {named} codes named: is the check reading the descriptions?");
    }
}
