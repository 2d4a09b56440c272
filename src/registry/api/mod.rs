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
use axum::handler::Handler;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Error, Registry};
use crate::model::{Scope, VersionSpec};
use extract::{RBody, RPath, RQuery};
use refusal::bad_body;
pub use refusal::Refusal;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Params = RQuery<HashMap<String, String>>;

/// Whether `path` is one of this API's: the caller's fallbacks answer those in this dialect.
pub fn owns(path: &str) -> bool {
    path == "/registry" || path.starts_with("/registry/")
}

/// What a route needs from its caller, in the registry's words; the HTTP layer maps these to
/// grants (`registry.read`, `registry.write`, `registry.delete`, `registry.config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Any authenticated caller: the root, the schema types, the global settings' values.
    Open,
    /// `op` on the path's `{subject}`.
    Subject(Op),
    /// Reading some subject; the handler shows only the subjects in the caller's [`Readable`]
    /// (subject lists; a schema id is found only when a readable subject uses it).
    Readable,
    /// `op` on every subject: the global compatibility setting.
    Global(Op),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Delete,
    Config,
}

/// The subjects a caller may read, put into each request by the HTTP layer. A handler behind
/// [`Guard::Readable`] without it answers as if nothing were readable: it fails closed.
#[derive(Debug, Clone)]
pub struct Readable(pub Scope);

/// One route: method, path, guard, handler (serving exactly that method).
pub type Route<S> = (Method, &'static str, Guard, MethodRouter<S>);

/// Every route of the registry API, for the caller's router and its route table.
pub fn routes<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Vec<Route<S>> {
    use Guard::*;
    use Op::*;
    let r = registry;
    vec![
        at(&r, Method::GET, "/registry", Open, root),
        at(&r, Method::GET, "/registry/", Open, root),
        at(&r, Method::GET, "/registry/subjects", Readable, subjects),
        at(
            &r,
            Method::POST,
            "/registry/subjects/{subject}",
            Subject(Read),
            lookup,
        ),
        at(
            &r,
            Method::DELETE,
            "/registry/subjects/{subject}",
            Subject(Delete),
            delete_subject,
        ),
        at(
            &r,
            Method::GET,
            "/registry/subjects/{subject}/versions",
            Subject(Read),
            versions,
        ),
        at(
            &r,
            Method::POST,
            "/registry/subjects/{subject}/versions",
            Subject(Write),
            register,
        ),
        at(
            &r,
            Method::GET,
            "/registry/subjects/{subject}/versions/{version}",
            Subject(Read),
            version,
        ),
        at(
            &r,
            Method::DELETE,
            "/registry/subjects/{subject}/versions/{version}",
            Subject(Delete),
            delete_version,
        ),
        at(
            &r,
            Method::GET,
            "/registry/subjects/{subject}/versions/{version}/schema",
            Subject(Read),
            version_schema,
        ),
        at(&r, Method::GET, "/registry/schemas/types", Open, types),
        at(
            &r,
            Method::GET,
            "/registry/schemas/ids/{id}",
            Readable,
            schema_by_id,
        ),
        at(
            &r,
            Method::GET,
            "/registry/schemas/ids/{id}/schema",
            Readable,
            raw_schema_by_id,
        ),
        at(
            &r,
            Method::GET,
            "/registry/schemas/ids/{id}/versions",
            Readable,
            schema_usages,
        ),
        // A compatibility check changes nothing: reading the subject is enough.
        at(
            &r,
            Method::POST,
            "/registry/compatibility/subjects/{subject}/versions",
            Subject(Read),
            check_all,
        ),
        at(
            &r,
            Method::POST,
            "/registry/compatibility/subjects/{subject}/versions/{version}",
            Subject(Read),
            check_one,
        ),
        at(&r, Method::GET, "/registry/config", Open, global_config),
        at(
            &r,
            Method::PUT,
            "/registry/config",
            Global(Config),
            set_global_config,
        ),
        at(
            &r,
            Method::GET,
            "/registry/config/{subject}",
            Subject(Read),
            subject_config,
        ),
        at(
            &r,
            Method::PUT,
            "/registry/config/{subject}",
            Subject(Config),
            set_subject_config,
        ),
        at(
            &r,
            Method::DELETE,
            "/registry/config/{subject}",
            Subject(Config),
            delete_subject_config,
        ),
    ]
}

/// One route serving exactly `method`, on the registry's state.
fn at<H, T, S>(
    r: &Arc<Registry>,
    method: Method,
    path: &'static str,
    guard: Guard,
    handler: H,
) -> Route<S>
where
    H: Handler<T, Arc<Registry>>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
    (
        method,
        path,
        guard,
        on(filter, handler).with_state(r.clone()),
    )
}

/// The registry API alone, with every subject readable: for embedding without keel's
/// authentication (keel's own router guards each route instead).
pub fn router(registry: Arc<Registry>) -> Router {
    let mut router = Router::new();
    for (_, path, _, handler) in routes(registry) {
        router = router.route(path, handler);
    }
    router.layer(axum::Extension(Readable(Scope::everything())))
}

/// The caller's readable subjects; none when the HTTP layer put none in.
fn readable(scope: Option<Extension<Readable>>) -> Scope {
    scope.map(|Extension(Readable(s))| s).unwrap_or_default()
}

/// Refuses a schema id no readable subject uses, as if it did not exist.
async fn check_readable_id(r: &Registry, id: i32, scope: &Scope) -> Result<(), Refusal> {
    if scope.is_everything() {
        return Ok(());
    }
    let usages = r.usages(id, true).await?;
    if usages.iter().any(|(subject, _)| scope.contains(subject)) {
        Ok(())
    } else {
        Err(Error::SchemaNotFound.into())
    }
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

async fn subjects(
    State(r): State<Arc<Registry>>,
    scope: Option<Extension<Readable>>,
    RQuery(p): Params,
) -> Reply {
    let scope = readable(scope);
    let mut subjects = r.subjects(flag(&p, "deleted")).await?;
    subjects.retain(|s| scope.contains(s));
    Ok(reply(json!(subjects)))
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

async fn schema_by_id(
    State(r): State<Arc<Registry>>,
    scope: Option<Extension<Readable>>,
    RPath(id): RPath<String>,
) -> Reply {
    let id = schema_id(&id)?;
    check_readable_id(&r, id, &readable(scope)).await?;
    let (text, _) = r.schema_by_id(id).await?;
    Ok(reply(json!({"schema": text})))
}

async fn raw_schema_by_id(
    State(r): State<Arc<Registry>>,
    scope: Option<Extension<Readable>>,
    RPath(id): RPath<String>,
) -> Reply {
    let id = schema_id(&id)?;
    check_readable_id(&r, id, &readable(scope)).await?;
    let (text, _) = r.schema_by_id(id).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn schema_usages(
    State(r): State<Arc<Registry>>,
    scope: Option<Extension<Readable>>,
    RPath(id): RPath<String>,
    RQuery(p): Params,
) -> Reply {
    let id = schema_id(&id)?;
    let scope = readable(scope);
    check_readable_id(&r, id, &scope).await?;
    let usages = r.usages(id, flag(&p, "deleted")).await?;
    let body: Vec<Value> = usages
        .into_iter()
        .filter(|(s, _)| scope.contains(s))
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
