//! The HTTP API under `/api/v1`: JSON in and out, errors as [`ErrorBody`] with stable codes,
//! request bodies size-limited, users and hosts authenticated by bearer tokens.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;

use klive_format::api::{
    ChannelRequest, CheckIn, EnrollTokenRequest, ErrorBody, ErrorDetail, HostListQuery, HostPolicy,
    PromoteRequest, RegisterRequest, UserRequest, WithdrawRequest,
};
use klive_format::release::ReleaseManifest;
use klive_format::{BuildId, PatchLevel};

use crate::domain::{AuthHost, AuthUser, Service};
use crate::error::Error;
use crate::store::audit;

/// Largest JSON request body.
pub const JSON_LIMIT: usize = 64 * 1024;
/// Largest module upload.
pub const MODULE_LIMIT: usize = 64 * 1024 * 1024;

/// The OpenAPI document, kept in the repository and tested against [`ROUTES`].
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route the router serves, as (method, OpenAPI path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/health"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/register"),
    ("post", "/api/v1/checkin"),
    ("get", "/api/v1/host/releases/{build_id}/{level}/manifest"),
    ("get", "/api/v1/host/releases/{build_id}/{level}/module"),
    ("get", "/api/v1/tuf/root.json"),
    ("get", "/api/v1/tuf/{channel}/metadata/{file}"),
    ("get", "/api/v1/tuf/{channel}/targets/{file}"),
    ("post", "/api/v1/blobs"),
    ("get", "/api/v1/releases"),
    ("post", "/api/v1/releases"),
    ("get", "/api/v1/releases/{build_id}/{level}"),
    ("post", "/api/v1/releases/{build_id}/{level}/promote"),
    ("post", "/api/v1/releases/{build_id}/{level}/withdraw"),
    ("get", "/api/v1/promotions"),
    ("post", "/api/v1/promotions/{id}/approve"),
    ("get", "/api/v1/channels"),
    ("post", "/api/v1/channels"),
    ("get", "/api/v1/fleet"),
    ("get", "/api/v1/hosts"),
    ("get", "/api/v1/hosts/{id}"),
    ("put", "/api/v1/hosts/{id}/policy"),
    ("post", "/api/v1/hosts/{id}/revoke"),
    ("post", "/api/v1/enroll-tokens"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("post", "/api/v1/users/{name}/tokens"),
    ("post", "/api/v1/users/{name}/tokens/revoke"),
    ("get", "/api/v1/audit"),
];

pub fn router(service: Service) -> Router {
    let json_limit = DefaultBodyLimit::max(JSON_LIMIT);
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/register", post(register))
        .route("/checkin", post(checkin))
        .route(
            "/host/releases/{build_id}/{level}/manifest",
            get(host_manifest),
        )
        .route("/host/releases/{build_id}/{level}/module", get(host_module))
        .route("/tuf/root.json", get(tuf_root))
        .route("/tuf/{channel}/metadata/{file}", get(tuf_metadata))
        .route("/tuf/{channel}/targets/{file}", get(tuf_target))
        .route("/releases", get(releases).post(publish))
        .route("/releases/{build_id}/{level}", get(release))
        .route("/releases/{build_id}/{level}/promote", post(promote))
        .route("/releases/{build_id}/{level}/withdraw", post(withdraw))
        .route("/promotions", get(promotions))
        .route("/promotions/{id}/approve", post(approve))
        .route("/channels", get(channels).post(add_channel))
        .route("/fleet", get(fleet))
        .route("/hosts", get(hosts))
        .route("/hosts/{id}", get(host))
        .route("/hosts/{id}/policy", put(set_policy))
        .route("/hosts/{id}/revoke", post(revoke))
        .route("/enroll-tokens", post(enroll_token))
        .route("/users", get(users).post(add_user))
        .route("/users/{name}/tokens", post(create_token))
        .route("/users/{name}/tokens/revoke", post(revoke_tokens))
        .route("/audit", get(audit_log))
        .layer(json_limit)
        // Registered after the layer so the module upload keeps its own, larger limit.
        .route(
            "/blobs",
            post(upload_blob).layer(DefaultBodyLimit::max(MODULE_LIMIT)),
        )
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .with_state(service)
}

// ---------------------------------------------------------------------------------------------
// Responses and errors

/// A JSON response with status 200.
struct JsonOut<T>(T);

impl<T: Serialize> IntoResponse for JsonOut<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => ApiError::from(Error::Corrupt(format!("serialising a response: {e}")))
                .into_response(),
        }
    }
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, e.code(), e.public_message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = Result<JsonOut<T>, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_route",
        "no such API route; see /api/v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method; see /api/v1/openapi.json",
    )
}

// ---------------------------------------------------------------------------------------------
// Extractors

/// A JSON body, size-limited by the route's body limit, with errors in the API's format.
struct JsonIn<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonIn<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        serde_json::from_slice(&bytes).map(JsonIn).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the request body is not the expected JSON: {e}"),
            )
        })
    }
}

fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than this route accepts",
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request body could not be read; send it again",
        )
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Error::Unauthenticated.into())
}

impl FromRequestParts<Service> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        Ok(service.users().authenticate_user(token).await?)
    }
}

impl FromRequestParts<Service> for AuthHost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        Ok(service.enrollment().authenticate_host(token).await?)
    }
}

/// Path parameters, with a rejection in the API's error format.
struct PathIn<T>(T);

impl<T: DeserializeOwned + Send> FromRequestParts<Service> for PathIn<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, service)
            .await
            .map(|Path(v)| PathIn(v))
            .map_err(|_| bad("a path parameter is not valid"))
    }
}

/// `{build_id}/{level}` path parameters, validated.
struct ReleaseKey(BuildId, PatchLevel);

impl FromRequestParts<Service> for ReleaseKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> Result<Self, ApiError> {
        let Path((build_id, level)) = Path::<(String, String)>::from_request_parts(parts, service)
            .await
            .map_err(|_| bad("the path must be .../{build_id}/{level}"))?;
        let build_id = build_id
            .parse()
            .map_err(|e: klive_format::IdError| bad(e.to_string()))?;
        let level = level
            .parse()
            .map_err(|e: klive_format::IdError| bad(e.to_string()))?;
        Ok(ReleaseKey(build_id, level))
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn health() -> JsonOut<serde_json::Value> {
    JsonOut(serde_json::json!({"status": "ok"}))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn register(
    State(s): State<Service>,
    JsonIn(req): JsonIn<RegisterRequest>,
) -> ApiResult<klive_format::api::RegisterResponse> {
    Ok(JsonOut(s.enrollment().register(&req).await?))
}

async fn checkin(
    State(s): State<Service>,
    host: AuthHost,
    JsonIn(req): JsonIn<CheckIn>,
) -> ApiResult<klive_format::api::CheckInResponse> {
    Ok(JsonOut(s.checkins().checkin(&host, &req).await?))
}

async fn host_manifest(
    State(s): State<Service>,
    host: AuthHost,
    ReleaseKey(b, l): ReleaseKey,
) -> ApiResult<ReleaseManifest> {
    Ok(JsonOut(s.delivery().host_manifest(&host, &b, l).await?))
}

async fn host_module(
    State(s): State<Service>,
    host: AuthHost,
    ReleaseKey(b, l): ReleaseKey,
) -> Result<Response, ApiError> {
    let bytes = s.delivery().host_module(&host, &b, l).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        bytes,
    )
        .into_response())
}

fn octets(bytes: impl Into<axum::body::Body>, content_type: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes.into(),
    )
        .into_response()
}

async fn tuf_root(State(s): State<Service>) -> Result<Response, ApiError> {
    Ok(octets(s.delivery().tuf_root()?, "application/json"))
}

async fn tuf_metadata(
    State(s): State<Service>,
    host: AuthHost,
    PathIn((channel, file)): PathIn<(String, String)>,
) -> Result<Response, ApiError> {
    let body = s
        .delivery()
        .host_tuf_metadata(&host, &channel, &file)
        .await?;
    Ok(octets(body, "application/json"))
}

async fn tuf_target(
    State(s): State<Service>,
    host: AuthHost,
    PathIn((channel, file)): PathIn<(String, String)>,
) -> Result<Response, ApiError> {
    let body = s.delivery().host_tuf_target(&host, &channel, &file).await?;
    Ok(octets(body, "application/octet-stream"))
}

async fn upload_blob(
    State(s): State<Service>,
    user: AuthUser,
    req: Request,
) -> ApiResult<klive_format::api::BlobStored> {
    let bytes = Bytes::from_request(req, &s).await.map_err(body_error)?;
    Ok(JsonOut(s.releases().store_blob(&user, bytes).await?))
}

async fn publish(
    State(s): State<Service>,
    user: AuthUser,
    JsonIn(manifest): JsonIn<ReleaseManifest>,
) -> ApiResult<klive_format::api::ReleaseInfo> {
    Ok(JsonOut(s.releases().publish(&user, manifest).await?))
}

async fn releases(
    State(s): State<Service>,
    _user: AuthUser,
) -> ApiResult<Vec<klive_format::api::ReleaseInfo>> {
    Ok(JsonOut(s.releases().list().await?))
}

async fn release(
    State(s): State<Service>,
    _user: AuthUser,
    ReleaseKey(b, l): ReleaseKey,
) -> ApiResult<klive_format::api::ReleaseInfo> {
    Ok(JsonOut(s.releases().get(&b, l).await?))
}

async fn promote(
    State(s): State<Service>,
    user: AuthUser,
    ReleaseKey(b, l): ReleaseKey,
    JsonIn(req): JsonIn<PromoteRequest>,
) -> ApiResult<klive_format::api::Promotion> {
    Ok(JsonOut(s.promotions().promote(&user, &b, l, &req).await?))
}

async fn withdraw(
    State(s): State<Service>,
    user: AuthUser,
    ReleaseKey(b, l): ReleaseKey,
    JsonIn(req): JsonIn<WithdrawRequest>,
) -> ApiResult<klive_format::api::ReleaseInfo> {
    Ok(JsonOut(
        s.releases().withdraw(&user, &b, l, &req.reason).await?,
    ))
}

async fn promotions(
    State(s): State<Service>,
    _user: AuthUser,
) -> ApiResult<Vec<klive_format::api::Promotion>> {
    Ok(JsonOut(s.promotions().list().await?))
}

async fn approve(
    State(s): State<Service>,
    user: AuthUser,
    PathIn(id): PathIn<String>,
) -> ApiResult<klive_format::api::Promotion> {
    Ok(JsonOut(s.promotions().approve(&user, &id).await?))
}

async fn channels(
    State(s): State<Service>,
    _user: AuthUser,
) -> ApiResult<Vec<klive_format::api::Channel>> {
    Ok(JsonOut(s.channels().list().await?))
}

async fn add_channel(
    State(s): State<Service>,
    user: AuthUser,
    JsonIn(req): JsonIn<ChannelRequest>,
) -> ApiResult<klive_format::api::Channel> {
    Ok(JsonOut(s.channels().add_channel(&user, &req).await?))
}

async fn fleet(
    State(s): State<Service>,
    user: AuthUser,
) -> ApiResult<klive_format::api::FleetSummary> {
    Ok(JsonOut(s.hosts().fleet(&user).await?))
}

async fn hosts(
    State(s): State<Service>,
    user: AuthUser,
    query: Result<Query<HostListQuery>, QueryRejection>,
) -> ApiResult<Vec<klive_format::api::HostInfo>> {
    let Query(q) = query.map_err(|e| bad(format!("the query string is not valid: {e}")))?;
    Ok(JsonOut(s.hosts().list(&user, &q).await?))
}

async fn host(
    State(s): State<Service>,
    user: AuthUser,
    PathIn(id): PathIn<String>,
) -> ApiResult<klive_format::api::HostInfo> {
    Ok(JsonOut(s.hosts().get(&user, &id).await?))
}

async fn set_policy(
    State(s): State<Service>,
    user: AuthUser,
    PathIn(id): PathIn<String>,
    JsonIn(policy): JsonIn<HostPolicy>,
) -> ApiResult<klive_format::api::HostInfo> {
    Ok(JsonOut(
        s.hosts().set_host_policy(&user, &id, &policy).await?,
    ))
}

async fn revoke(
    State(s): State<Service>,
    user: AuthUser,
    PathIn(id): PathIn<String>,
) -> ApiResult<klive_format::api::HostInfo> {
    Ok(JsonOut(s.hosts().revoke_host(&user, &id).await?))
}

async fn enroll_token(
    State(s): State<Service>,
    user: AuthUser,
    JsonIn(req): JsonIn<EnrollTokenRequest>,
) -> ApiResult<klive_format::api::EnrollTokenCreated> {
    Ok(JsonOut(
        s.enrollment().create_enroll_token(&user, &req).await?,
    ))
}

async fn users(
    State(s): State<Service>,
    user: AuthUser,
) -> ApiResult<Vec<klive_format::api::User>> {
    Ok(JsonOut(s.users().list(&user).await?))
}

async fn add_user(
    State(s): State<Service>,
    user: AuthUser,
    JsonIn(req): JsonIn<UserRequest>,
) -> ApiResult<klive_format::api::User> {
    Ok(JsonOut(
        s.users().add_user(Some(&user), &req.name, req.role).await?,
    ))
}

async fn create_token(
    State(s): State<Service>,
    user: AuthUser,
    PathIn(name): PathIn<String>,
) -> ApiResult<klive_format::api::TokenCreated> {
    Ok(JsonOut(s.users().create_token(Some(&user), &name).await?))
}

async fn revoke_tokens(
    State(s): State<Service>,
    user: AuthUser,
    PathIn(name): PathIn<String>,
) -> ApiResult<serde_json::Value> {
    let revoked = s.users().revoke_tokens(Some(&user), &name).await?;
    Ok(JsonOut(
        serde_json::json!({"user": name, "revoked": revoked}),
    ))
}

async fn audit_log(
    State(s): State<Service>,
    _user: AuthUser,
) -> ApiResult<Vec<klive_format::api::AuditEntry>> {
    Ok(JsonOut(audit::recent(s.db(), 1000).await?))
}
