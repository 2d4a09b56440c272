//! `/v1/principals` and `/v1/keys`: principals, their keys and custom grants. Every change is
//! audited; a new key's secret appears in the reply only, never in the audit row or a log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body, Path};
use super::super::AppState;
use super::{audited, Op};
use crate::auth::{Caller, Grant, KeyId, Keys, Kind, PrincipalName, Role};

fn key_store(state: &AppState) -> Result<&Keys, ApiError> {
    state.keys.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "auth_disabled",
            "principals are managed only with authentication on (auth.mode = \"required\")",
        )
    })
}

fn name(text: &str) -> Result<PrincipalName, ApiError> {
    PrincipalName::parse(text).map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))
}

/// `GET /v1/principals`
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = key_store(&state)?;
    let mut conn = state.store.pool().acquire().await?;
    let principals = keys.principals(&mut conn).await?;
    Ok(Json(json!({ "principals": principals })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    name: String,
    kind: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// `POST /v1/principals`: 201 with the principal.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Body(body): Body<NewPrincipal>,
) -> Result<Response, ApiError> {
    let keys = key_store(&state)?.clone();
    let who = name(&body.name)?;
    let kind = match body.kind.as_deref() {
        None => Kind::Service,
        Some(k) => {
            Kind::parse(k).map_err(|e| ApiError::bad_request("invalid_kind", e.to_string()))?
        }
    };
    let roles = body
        .roles
        .iter()
        .map(|r| Role::parse(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request("invalid_role", e.to_string()))?;
    let op = Op::new(
        &caller,
        &request,
        "principal.create",
        json!({"principal": who}),
    )
    .params(json!({"kind": kind, "roles": roles}));
    let created = audited(&state, op, move |conn| {
        Box::pin(async move { Ok(keys.create_principal(conn, &who, kind, &roles).await?) })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!(created))).into_response())
}

/// `POST /v1/principals/{principal}/disable`
pub async fn disable(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(principal): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = key_store(&state)?.clone();
    let who = name(&principal)?;
    let op = Op::new(
        &caller,
        &request,
        "principal.disable",
        json!({"principal": who}),
    );
    let target = who.clone();
    audited(&state, op, move |conn| {
        Box::pin(async move { Ok(keys.disable_principal(conn, &target).await?) })
    })
    .await?;
    Ok(Json(json!({ "disabled": who })))
}

/// `GET /v1/principals/{principal}/keys`: ids and dates, never secrets.
pub async fn keys_of(state: &AppState, principal: &str) -> Result<Value, ApiError> {
    let keys = key_store(state)?;
    let who = name(principal)?;
    let mut conn = state.store.pool().acquire().await?;
    Ok(json!({ "keys": keys.keys(&mut conn, &who).await? }))
}

pub async fn keys(
    State(state): State<AppState>,
    Path(principal): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(keys_of(&state, &principal).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    expires_at: Option<DateTime<Utc>>,
}

/// `POST /v1/principals/{principal}/keys`: 201 with the key, shown this once.
pub async fn create_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(principal): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let keys = key_store(&state)?.clone();
    let who = name(&principal)?;
    let expires_at = super::optional_body::<NewKey>(&body)?.expires_at;
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::bad_request(
            "invalid_expiry",
            "expires_at must be in the future",
        ));
    }
    let key = crate::auth::ApiKey::generate().map_err(|e| {
        tracing::error!(error = %e, "the OS random number generator failed");
        ApiError::internal()
    })?;
    let key_id = key.id();
    let op = Op::new(&caller, &request, "key.create", json!({"principal": who}))
        .params(json!({"key_id": key_id.to_string(), "expires_at": expires_at}));
    let stored = key.clone();
    audited(&state, op, move |conn| {
        Box::pin(async move { Ok(keys.add_key(conn, &who, &stored, expires_at).await?) })
    })
    .await?;
    let body =
        json!({"key": key.expose_secret(), "key_id": key_id.to_string(), "expires_at": expires_at});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /v1/keys/{key_id}`: revoked at once here, within the cache TTL elsewhere.
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = key_store(&state)?.clone();
    let id = KeyId::parse(&key_id)
        .map_err(|e| ApiError::bad_request("invalid_key_id", e.to_string()))?;
    let op = Op::new(
        &caller,
        &request,
        "key.revoke",
        json!({"key_id": id.to_string()}),
    );
    audited(&state, op, move |conn| {
        Box::pin(async move { Ok(keys.revoke_key(conn, &id).await?) })
    })
    .await?;
    Ok(Json(json!({ "revoked": key_id })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    effect: Option<String>,
    action: String,
    resource: Option<String>,
    event_type: Option<String>,
}

impl GrantBody {
    fn grant(&self) -> Result<Grant, ApiError> {
        Grant::parse(
            self.effect.as_deref().unwrap_or("allow"),
            &self.action,
            self.resource.as_deref().unwrap_or("*"),
            self.event_type.as_deref().unwrap_or("*"),
        )
        .map_err(|e| ApiError::bad_request("invalid_grant", e.to_string()))
    }
}

/// `POST /v1/principals/{principal}/grants`: 201.
pub async fn add_grant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(principal): Path<String>,
    Body(body): Body<GrantBody>,
) -> Result<Response, ApiError> {
    let keys = key_store(&state)?.clone();
    let who = name(&principal)?;
    let grant = body.grant()?;
    let op =
        Op::new(&caller, &request, "grant.add", json!({"principal": who})).params(json!(grant));
    let added = grant.clone();
    audited(&state, op, move |conn| {
        Box::pin(async move { Ok(keys.add_grant(conn, &who, &added).await?) })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "grant": grant }))).into_response())
}

/// `POST /v1/principals/{principal}/grants/remove`: whether the principal had the grant.
pub async fn remove_grant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(principal): Path<String>,
    Body(body): Body<GrantBody>,
) -> Result<Json<Value>, ApiError> {
    let keys = key_store(&state)?.clone();
    let who = name(&principal)?;
    let grant = body.grant()?;
    let op =
        Op::new(&caller, &request, "grant.remove", json!({"principal": who})).params(json!(grant));
    let removed = audited(&state, op, move |conn| {
        Box::pin(async move { Ok(keys.remove_grant(conn, &who, &grant).await?) })
    })
    .await?;
    Ok(Json(json!({ "removed": removed })))
}
