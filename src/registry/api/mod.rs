//! The Confluent Schema Registry REST API, mounted at `/registry`, so that standard serdes and
//! clients in any language (confluent-kafka, KafkaAvroSerializer, kafkajs' schema-registry) work
//! against keel unchanged.
//!
//! Replies use `application/vnd.schemaregistry.v1+json` and Confluent's error body
//! `{"error_code": 40401, "message": "..."}`; keel adds its own `error` object next to those two
//! fields, which Confluent clients ignore. Unknown query parameters are ignored, as Confluent does,
//! because clients send options (`normalize`, `format`…) that keel does not need.
//!
//! This file holds the routes and handlers; [`Refusal`] (in `refusal`) decides every status and
//! code, and `extract` turns axum's rejections into refusals.

mod extract;
mod refusal;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Error, Registry};
use crate::model::VersionSpec;
use extract::{RBody, RPath, RQuery};
use refusal::bad_body;
pub use refusal::Refusal;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Params = RQuery<HashMap<String, String>>;

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
