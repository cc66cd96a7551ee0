//! Sign-in and sign-out (`/ui/login`, `/ui/logout`), the session lookup behind every page
//! (session cookie, or a bearer API token for scripts), CSRF checks and the dashboard's cookies.

use std::collections::HashMap;

use askama::Template;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde_json::json;

use super::{CSS, Dashboard, Denied, html_with_status};
use crate::domain::AuthUser;
use crate::error::Error;
use crate::store::audit::{self, Actor};
use crate::store::sessions;
use crate::trust::secrets::new_secret;

const SESSION_COOKIE: &str = "klive_session";
const LOGIN_COOKIE: &str = "klive_login";
const SESSION_SECS: i64 = 12 * 3600;

#[derive(Debug, Clone)]
pub struct Session {
    pub user: AuthUser,
    pub csrf: String,
}

/// A page handler taking a `Session` serves only a signed-in user; anyone else is sent to the
/// sign-in page. Put it after the handler's other request-part extractors, so that they are
/// checked first as they always were.
impl FromRequestParts<Dashboard> for Session {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, d: &Dashboard) -> Result<Session, Denied> {
        d.session(&parts.headers).await
    }
}

impl Dashboard {
    /// The signed-in user, from the session cookie or (for scripts) a bearer API token.
    pub async fn session(&self, headers: &HeaderMap) -> Result<Session, Denied> {
        if let Some(token) = bearer(headers) {
            let user = self.service.users().authenticate_user(token).await?;
            return Ok(Session {
                user,
                csrf: String::new(),
            });
        }
        let id = cookie(headers, SESSION_COOKIE).ok_or(Denied::Login)?;
        // A user whose every token was revoked is signed out too.
        let live = sessions::find(self.service.db(), &id, self.service.clock().now_ms())
            .await?
            .ok_or(Denied::Login)?;
        Ok(Session {
            user: AuthUser {
                name: live.user,
                role: live.role,
            },
            csrf: live.csrf,
        })
    }

    /// A cookie that only this site's pages get back and no script reads: HttpOnly,
    /// SameSite=Strict, scoped to `path`, kept `max_age_secs`, and `Secure` over HTTPS.
    fn cookie(
        &self,
        name: &'static str,
        value: String,
        path: &'static str,
        max_age_secs: i64,
    ) -> Cookie<'static> {
        Cookie::build((name, value))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.https)
            .path(path)
            .max_age(time::Duration::seconds(max_age_secs))
            .build()
    }
}

/// The value of the request's cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    CookieJar::from_headers(headers)
        .get(name)
        .map(|c| c.value().to_owned())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

impl Dashboard {
    /// The session of a posted form, refused unless the form carries the session's CSRF
    /// token. POST handlers call it themselves: their body extractor must come last, so the
    /// form is read before the session is checked.
    pub(super) async fn form_session(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<Session, Denied> {
        let session = self.session(headers).await?;
        check_csrf(&session, form)?;
        Ok(session)
    }
}

/// Refuses a form whose CSRF token is not the session's.
fn check_csrf(session: &Session, form: &HashMap<String, String>) -> Result<(), Denied> {
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    if session.csrf.is_empty() || !secret_eq(sent, &session.csrf) {
        return Err(Denied::Error(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page and try again".into(),
        ));
    }
    Ok(())
}

/// Compares a secret sent by the client with the expected one in constant time.
fn secret_eq(sent: &str, expected: &str) -> bool {
    verify_slices_are_equal(sent.as_bytes(), expected.as_bytes()).is_ok()
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage<'a> {
    css: &'a str,
    csrf: String,
    error: Option<String>,
}

fn login_response(
    d: &Dashboard,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, Denied> {
    let csrf = new_secret("").map_err(Denied::from)?;
    let r = html_with_status(
        &LoginPage {
            css: CSS,
            csrf: csrf.clone(),
            error,
        },
        status,
    )?;
    let jar = CookieJar::new().add(d.cookie(LOGIN_COOKIE, csrf, "/ui/login", 3600));
    Ok((jar, r).into_response())
}

pub(super) async fn login_page(State(d): State<Dashboard>) -> Result<Response, Denied> {
    login_response(&d, None, StatusCode::OK)
}

pub(super) async fn login(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Denied> {
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !secret_eq(sent, &expected) {
        return login_response(
            &d,
            Some("the sign-in form expired; sign in again".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
    let user = match d.service.users().authenticate_user(token).await {
        Ok(u) => u,
        Err(Error::Unauthenticated) => {
            return login_response(
                &d,
                Some("unknown or revoked token; ask an admin for a new one".into()),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return Err(e.into()),
    };
    let id = new_secret("kls_").map_err(Denied::from)?;
    let csrf = new_secret("").map_err(Denied::from)?;
    let now = d.service.clock().now_ms();
    let mut tx = d.service.db().begin_audited().await.map_err(Denied::from)?;
    sessions::create(
        &mut tx,
        &id,
        &user.name,
        &csrf,
        now,
        now + SESSION_SECS * 1000,
    )
    .await?;
    audit::append(
        &mut tx,
        now,
        &Actor::User(user.name.clone()),
        "session.login",
        &user.name,
        json!({}),
    )
    .await?;
    tx.commit().await.map_err(Error::from)?;
    let jar = CookieJar::new().add(d.cookie(SESSION_COOKIE, id, "/", SESSION_SECS));
    Ok((jar, Redirect::to("/ui/")).into_response())
}

/// Signs out: the session is deleted and its cookie expired.
pub(super) async fn logout(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Denied> {
    d.form_session(&headers, &form).await?;
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        let mut tx = d.service.db().begin_audited().await?;
        sessions::delete(&mut tx, &id).await?;
        tx.commit().await.map_err(Error::from)?;
    }
    // The same cookie, empty and already expired.
    let jar = CookieJar::new().add(d.cookie(SESSION_COOKIE, String::new(), "/", 0));
    Ok((jar, Redirect::to("/ui/login")).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn cookies_are_parsed_and_secrets_compared() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; klive_session=kls_x; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("kls_x"));
        assert_eq!(cookie(&h, "nope"), None);
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "ab"));
    }
}
