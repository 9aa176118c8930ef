//! The OpenAPI 3.1 document of each listener, made from the same routes the listener serves
//! (each route's `#[utoipa::path]`), so the two cannot drift apart: `warden openapi` prints
//! them and the admin listener serves them at `/openapi/{listener}.json`.
//!
//! What every route shares is added here, once for all: the `x-request-id` header every
//! request may carry and every answer does, and, on the jobs listener, its two credentials.

use std::collections::BTreeMap;

use axum::body::Bytes;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Components, HeaderBuilder, InfoBuilder, LicenseBuilder, ObjectBuilder, OpenApi, Ref, RefOr,
    Required, Schema, ServerBuilder, Type,
};

use crate::admin;
use crate::config::{
    DEFAULT_ADMIN_ADDR, DEFAULT_HASHES_ADDR, DEFAULT_JOBS_ADDR, DEFAULT_REGISTRY_ADDR,
};
use crate::hashes::Hashes;
use crate::jobs::Jobs;
use crate::openapi::Api;
use crate::registry::Registry;
use crate::service::Service;

/// The name the jobs listener's client certificate goes by in its document.
const MUTUAL_TLS: &str = "clientCertificate";
/// The name the jobs listener's bearer token goes by in its document.
const BEARER: &str = "bearerToken";
/// The header that carries a request's id, and the name of its description.
const REQUEST_ID: &str = "x-request-id";
const REQUEST_ID_NAME: &str = "RequestId";

/// The OpenAPI document of `api`'s listener.
pub fn document(api: Api) -> OpenApi {
    let mut document = match api {
        Api::Hashes => Hashes::routes()
            .into_openapi()
            .merge_from(admin::shutdown_routes().into_openapi()),
        Api::Registry => Registry::routes().into_openapi(),
        Api::Jobs => with_credentials(Jobs::routes().into_openapi()),
        Api::Admin => admin::routes()
            .into_openapi()
            .merge_from(admin::shutdown_routes().into_openapi()),
    };
    document.info = InfoBuilder::new()
        .title(format!("warden: {}", api.name()))
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description(api)))
        .license(Some(
            LicenseBuilder::new()
                .name("MIT OR Apache-2.0")
                .identifier(Some("MIT OR Apache-2.0"))
                .build(),
        ))
        .build();
    document.servers = Some(vec![
        ServerBuilder::new()
            .url(default_url(api))
            .description(Some("where `warden serve` listens unless told otherwise"))
            .build(),
    ]);
    with_request_ids(&mut document);
    document
}

/// Every listener's document as JSON, by listener, for the admin listener to serve.
pub fn documents() -> Result<BTreeMap<Api, Bytes>, serde_json::Error> {
    Api::ALL
        .into_iter()
        .map(|api| Ok((api, Bytes::from(document(api).to_pretty_json()?))))
        .collect()
}

/// The jobs listener's credentials: over mutual TLS the client certificate, and a bearer
/// token beside it if the client sends one; over `--jobs-tls off` the token alone.
fn with_credentials(mut document: OpenApi) -> OpenApi {
    let components = document.components.get_or_insert_with(Components::default);
    components.security_schemes.insert(
        MUTUAL_TLS.to_owned(),
        RefOr::T(SecurityScheme::MutualTls {
            description: Some(
                "A client certificate signed by the client CA; its subject's Common Name is the \
                 user, and an organisational unit `admin` (the only one) makes it an admin."
                    .to_owned(),
            ),
            deprecated: None,
            extensions: None,
        }),
    );
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".to_owned());
    bearer.description = Some(
        "A token from `warden token issue`. Over mutual TLS it is optional and must name the \
         certificate's user; over `--jobs-tls off` it is the only credential."
            .to_owned(),
    );
    components
        .security_schemes
        .insert(BEARER.to_owned(), RefOr::T(SecurityScheme::Http(bearer)));
    let none: [&str; 0] = [];
    document.security = Some(vec![
        SecurityRequirement::new(MUTUAL_TLS, none),
        SecurityRequirement::new(MUTUAL_TLS, none).add(BEARER, none),
        SecurityRequirement::new(BEARER, none),
    ]);
    document
}

/// Adds `x-request-id` to every operation: a header the request may carry (kept if it is one
/// plain token of at most 128 characters, replaced otherwise) and every answer does. Both are described once, in
/// the components, and referred to from each operation.
fn with_request_ids(document: &mut OpenApi) {
    let schema = || {
        Some(RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9._:-]{1,128}$"))
                .build(),
        )))
    };
    let components = document.components.get_or_insert_with(Components::default);
    components.parameters.insert(
        REQUEST_ID_NAME.to_owned(),
        RefOr::T(
            ParameterBuilder::new()
                .name(REQUEST_ID)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "The request's id for the logs, kept if it is one plain token of 1 to 128 \
                     of `A-Z a-z 0-9 . _ : -`; any other value is replaced by a new id, never \
                     refused",
                ))
                .schema(Some(RefOr::T(Schema::Object(
                    ObjectBuilder::new().schema_type(Type::String).build(),
                ))))
                .build(),
        ),
    );
    components.headers.insert(
        REQUEST_ID_NAME.to_owned(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(schema())
                .description(Some("The request's id, as sent or as made"))
                .build(),
        ),
    );
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
            &mut item.query,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .parameters
                .get_or_insert_with(Vec::new)
                .push(RefOr::Ref(Ref::new(format!(
                    "#/components/parameters/{REQUEST_ID_NAME}"
                ))));
            for response in operation.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response.headers.insert(
                        REQUEST_ID.to_owned(),
                        RefOr::Ref(Ref::new(format!("#/components/headers/{REQUEST_ID_NAME}"))),
                    );
                }
            }
        }
    }
}

/// Where `warden serve` puts `api`'s listener by default.
fn default_url(api: Api) -> String {
    match api {
        Api::Hashes => format!("http://{DEFAULT_HASHES_ADDR}"),
        Api::Registry => format!("http://{DEFAULT_REGISTRY_ADDR}"),
        Api::Jobs => format!("https://{DEFAULT_JOBS_ADDR}"),
        Api::Admin => format!("http://{DEFAULT_ADMIN_ADDR}"),
    }
}

/// What the document says of its listener as a whole: what every route may answer beside
/// what each route lists.
fn description(api: Api) -> String {
    let what = match api {
        Api::Hashes => {
            "The delayed password-hash service: `POST /hash` answers with an id at once, and \
             `GET /hash/{id}` gives the password's SHA-512 from `--hash-delay` (5 s) later."
        }
        Api::Registry => {
            "Heartbeat discovery: instances register and refresh under a group with heartbeats, \
             and expire `--instance-ttl` (30 s) after their last one."
        }
        Api::Jobs => {
            "The job runner: queue a program, stop it, read it, read or follow its output. A \
             user sees and stops only its own jobs (another's answers 404); an admin sees all."
        }
        Api::Admin => "warden's health, its shutdown and these documents.",
    };
    format!(
        "{what}\n\nOn every route: errors are JSON `{{\"error\": \"…\"}}`; a path no route has \
         is 404, and a method the path does not take is 405 with `Allow` listing those it does; \
         once warden drains, new requests get 503 (except `/shutdown`) and the connection closes. \
         Minor releases only add to this document: routes, optional fields and answers."
    )
}
