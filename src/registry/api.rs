//! The Confluent Schema Registry REST API, mounted at `/registry`, so that standard serdes and
//! clients in any language (confluent-kafka, KafkaAvroSerializer, kafkajs' schema-registry) work
//! against keel unchanged.
//!
//! Replies use `application/vnd.schemaregistry.v1+json` and Confluent's error body
//! `{"error_code": 40401, "message": "..."}`; keel adds its own `error` object next to those two
//! fields, which Confluent clients ignore. Unknown query parameters are ignored, as Confluent does,
//! because clients send options (`normalize`, `format`…) that keel does not need.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Error, Registry};
use crate::model::{InvalidVersion, VersionSpec};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Params = RQuery<HashMap<String, String>>;

/// Path parameters; a malformed path is a Confluent-shaped 404.
struct RPath<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for RPath<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|r| Refusal::http(StatusCode::NOT_FOUND, "invalid_path", r.body_text()))
    }
}

/// Query parameters; a malformed query string is a Confluent-shaped 400.
struct RQuery<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for RQuery<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r| Refusal::http(StatusCode::BAD_REQUEST, "invalid_query", r.body_text()))
    }
}

/// The raw body; one over the size limit is a Confluent-shaped 413.
struct RBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for RBody {
    type Rejection = Refusal;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|r| Refusal::http(r.status(), "invalid_body", r.body_text()))
    }
}

/// Whether `path` is one of this API's: the caller's fallbacks answer those in this dialect.
pub fn owns(path: &str) -> bool {
    path == "/registry" || path.starts_with("/registry/")
}

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/registry", get(root))
        .route("/registry/", get(root))
        .route("/registry/subjects", get(subjects))
        .route(
            "/registry/subjects/{subject}",
            post(lookup).delete(delete_subject),
        )
        .route(
            "/registry/subjects/{subject}/versions",
            get(versions).post(register),
        )
        .route(
            "/registry/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/registry/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/registry/schemas/types", get(types))
        .route("/registry/schemas/ids/{id}", get(schema_by_id))
        .route("/registry/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/registry/schemas/ids/{id}/versions", get(schema_usages))
        .route(
            "/registry/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/registry/compatibility/subjects/{subject}/versions/{version}",
            post(check_one),
        )
        .route(
            "/registry/config",
            get(global_config).put(set_global_config),
        )
        .route(
            "/registry/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .with_state(registry)
}

/// A registry reply: status, Confluent's content type, JSON body.
fn reply(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// Why a registry request failed, in Confluent's shape (plus keel's `error` object).
pub struct Refusal {
    status: StatusCode,
    error_code: u32,
    code: &'static str,
    message: String,
    details: Value,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({
            "error_code": self.error_code,
            "message": self.message,
            "error": {"code": self.code, "message": self.message, "details": self.details},
        });
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

impl Refusal {
    /// No route at this path under `/registry`.
    pub fn route_not_found() -> Self {
        Self::http(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "HTTP 404 Not Found",
        )
    }

    /// A `/registry` route that does not serve this method.
    pub fn method_not_allowed() -> Self {
        Self::http(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "HTTP 405 Method Not Allowed",
        )
    }

    /// A failure of HTTP itself, whose Confluent `error_code` is the status, as Confluent's are.
    fn http(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_code: u32::from(status.as_u16()),
            code,
            message: message.into(),
            details: json!({}),
        }
    }
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        let error_code = err.code();
        let (status, code) = match &err {
            Error::SubjectNotFound(_) => (StatusCode::NOT_FOUND, "subject_not_found"),
            Error::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
            Error::SchemaNotFound => (StatusCode::NOT_FOUND, "schema_not_found"),
            Error::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, "subject_soft_deleted"),
            Error::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, "subject_not_soft_deleted"),
            Error::VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, "version_soft_deleted"),
            Error::VersionNotSoftDeleted { .. } => {
                (StatusCode::NOT_FOUND, "version_not_soft_deleted")
            }
            Error::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, "subject_config_not_found"),
            Error::Incompatible { .. } => (StatusCode::CONFLICT, "incompatible_schema"),
            Error::InvalidSchema(_) | Error::UnsupportedSchemaType(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_schema")
            }
            Error::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_version"),
            Error::InvalidCompatibility(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_compatibility_level",
            ),
            Error::UnsupportedText => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_character"),
            Error::Unavailable(_) | Error::Database(_) => {
                tracing::error!(error = ?err, "schema registry store error");
                let status = if err.is_retriable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                // Never the driver's text: it can hold SQL.
                return Self {
                    status,
                    error_code,
                    code: "registry_store_error",
                    message: "error in the backend data store".into(),
                    details: json!({}),
                };
            }
        };
        let details = match &err {
            Error::Incompatible { found, .. } => json!({"incompatibilities": found}),
            _ => json!({}),
        };
        Self {
            status,
            error_code,
            code,
            message: err.to_string(),
            details,
        }
    }
}

impl From<InvalidVersion> for Refusal {
    fn from(err: InvalidVersion) -> Self {
        Error::from(err).into()
    }
}

fn bad_body(message: String) -> Refusal {
    Refusal::http(StatusCode::BAD_REQUEST, "malformed_json", message)
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The body of a register, lookup or compatibility request. Other fields Confluent clients send
/// (`metadata`, `ruleSet`…) are accepted and ignored.
#[derive(Deserialize)]
struct SchemaBody {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

/// Reads a schema body whatever its content type: clients send Confluent's, JSON's or none.
fn schema_body(body: &Bytes) -> Result<SchemaBody, Refusal> {
    let parsed: SchemaBody = serde_json::from_slice(body)
        .map_err(|e| bad_body(format!("malformed request body: {e}")))?;
    if !parsed.references.is_empty() {
        return Err(Error::InvalidSchema(
            "schema references are not supported by keel's registry".into(),
        )
        .into());
    }
    if parsed.schema.is_none() {
        return Err(Error::InvalidSchema("the request has no \"schema\"".into()).into());
    }
    Ok(parsed)
}

type Reply = Result<Response, Refusal>;

async fn root() -> Response {
    reply(json!({}))
}

async fn subjects(State(r): State<Arc<Registry>>, RQuery(p): Params) -> Reply {
    Ok(reply(json!(r.subjects(flag(&p, "deleted")).await?)))
}

async fn versions(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
    RQuery(p): Params,
) -> Reply {
    Ok(reply(json!(
        r.versions(&subject, flag(&p, "deleted")).await?
    )))
}

async fn register(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
    RBody(body): RBody,
) -> Reply {
    let body = schema_body(&body)?;
    let schema = body.schema.unwrap_or_default();
    let registered = r
        .register(&subject, &schema, body.schema_type.as_deref())
        .await?;
    Ok(reply(json!({"id": registered.id})))
}

async fn lookup(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
    RQuery(p): Params,
    RBody(body): RBody,
) -> Reply {
    let body = schema_body(&body)?;
    let found = r
        .lookup(
            &subject,
            &body.schema.unwrap_or_default(),
            flag(&p, "deleted"),
        )
        .await?;
    Ok(reply(json!(found)))
}

async fn version(
    State(r): State<Arc<Registry>>,
    RPath((subject, version)): RPath<(String, String)>,
    RQuery(p): Params,
) -> Reply {
    let found = r
        .version(&subject, VersionSpec::parse(&version)?, flag(&p, "deleted"))
        .await?;
    Ok(reply(json!(found)))
}

async fn version_schema(
    State(r): State<Arc<Registry>>,
    RPath((subject, version)): RPath<(String, String)>,
    RQuery(p): Params,
) -> Reply {
    let found = r
        .version(&subject, VersionSpec::parse(&version)?, flag(&p, "deleted"))
        .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.schema,
    )
        .into_response())
}

async fn delete_subject(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
    RQuery(p): Params,
) -> Reply {
    Ok(reply(json!(
        r.delete_subject(&subject, flag(&p, "permanent")).await?
    )))
}

async fn delete_version(
    State(r): State<Arc<Registry>>,
    RPath((subject, version)): RPath<(String, String)>,
    RQuery(p): Params,
) -> Reply {
    let deleted = r
        .delete_version(
            &subject,
            VersionSpec::parse(&version)?,
            flag(&p, "permanent"),
        )
        .await?;
    Ok(reply(json!(deleted)))
}

async fn types() -> Response {
    reply(json!(["AVRO"]))
}

fn schema_id(id: &str) -> Result<i32, Refusal> {
    id.parse().map_err(|_| Error::SchemaNotFound.into())
}

async fn schema_by_id(State(r): State<Arc<Registry>>, RPath(id): RPath<String>) -> Reply {
    let (text, _) = r.schema_by_id(schema_id(&id)?).await?;
    Ok(reply(json!({"schema": text})))
}

async fn raw_schema_by_id(State(r): State<Arc<Registry>>, RPath(id): RPath<String>) -> Reply {
    let (text, _) = r.schema_by_id(schema_id(&id)?).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn schema_usages(
    State(r): State<Arc<Registry>>,
    RPath(id): RPath<String>,
    RQuery(p): Params,
) -> Reply {
    let usages = r.usages(schema_id(&id)?, flag(&p, "deleted")).await?;
    let body: Vec<Value> = usages
        .into_iter()
        .map(|(s, v)| json!({"subject": s, "version": v}))
        .collect();
    Ok(reply(json!(body)))
}

async fn check(
    r: &Registry,
    subject: &str,
    version: Option<&str>,
    params: &HashMap<String, String>,
    body: &Bytes,
) -> Reply {
    let body = schema_body(body)?;
    let spec = version.map(VersionSpec::parse).transpose()?;
    let found = r
        .check(subject, spec, &body.schema.unwrap_or_default())
        .await?;
    let mut out = json!({"is_compatible": found.is_empty()});
    if flag(params, "verbose") {
        out["messages"] = json!(found
            .iter()
            .map(|i| format!(
                "{{errorType:'{}', path:'{}', description:'{}'}}",
                serde_json::to_value(i.kind)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or_default(),
                i.path,
                i.message
            ))
            .collect::<Vec<_>>());
    }
    Ok(reply(out))
}

async fn check_one(
    State(r): State<Arc<Registry>>,
    RPath((subject, version)): RPath<(String, String)>,
    RQuery(p): Params,
    RBody(body): RBody,
) -> Reply {
    check(&r, &subject, Some(&version), &p, &body).await
}

async fn check_all(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
    RQuery(p): Params,
    RBody(body): RBody,
) -> Reply {
    check(&r, &subject, None, &p, &body).await
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
}

fn config_body(body: &Bytes) -> Result<String, Refusal> {
    let parsed: ConfigBody = serde_json::from_slice(body)
        .map_err(|e| bad_body(format!("malformed request body: {e}")))?;
    parsed
        .compatibility
        .ok_or_else(|| Error::InvalidCompatibility(String::new()).into())
}

async fn global_config(State(r): State<Arc<Registry>>) -> Reply {
    let mode = r
        .config(None)
        .await?
        .map_or("BACKWARD_TRANSITIVE", |m| m.as_str());
    Ok(reply(json!({"compatibilityLevel": mode})))
}

async fn set_global_config(State(r): State<Arc<Registry>>, RBody(body): RBody) -> Reply {
    let mode = r.set_config(None, &config_body(&body)?).await?;
    Ok(reply(json!({"compatibility": mode})))
}

async fn subject_config(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
    RQuery(p): Params,
) -> Reply {
    let mode = match r.config(Some(&subject)).await? {
        Some(mode) => mode,
        None if flag(&p, "defaultToGlobal") => r.effective_config(&subject).await?,
        None => return Err(Error::SubjectConfigNotFound(subject).into()),
    };
    Ok(reply(json!({"compatibilityLevel": mode})))
}

async fn set_subject_config(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
    RBody(body): RBody,
) -> Reply {
    let mode = r.set_config(Some(&subject), &config_body(&body)?).await?;
    Ok(reply(json!({"compatibility": mode})))
}

async fn delete_subject_config(
    State(r): State<Arc<Registry>>,
    RPath(subject): RPath<String>,
) -> Reply {
    let previous = r.delete_config(&subject).await?;
    Ok(reply(json!({"compatibilityLevel": previous})))
}
