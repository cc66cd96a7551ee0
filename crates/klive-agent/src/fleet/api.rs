//! The server's HTTP API as the agent speaks it: JSON requests and answers, and error
//! answers turned into [`FleetError::Server`] with a hint of what to do.

use klive_format::api::ErrorBody;

use super::FleetError;
use crate::config::is_safe_name;
use crate::transport::{Http, Method, Request};

/// Parses an error answer into [`FleetError::Server`].
pub(super) fn server_error(what: &str, status: u16, body: &[u8]) -> FleetError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            "unknown".to_owned(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    let hint = match (status, code.as_str()) {
        (401, "enrollment_token_invalid") => {
            "ask the server's admin for a new enrollment token (`klive-server enroll-token create`)"
        }
        (401, _) => "this host's credential was revoked or is unknown: register it again",
        (409, "replayed_checkin") => {
            "another check-in with a higher sequence was accepted; the next one will be numbered above it"
        }
        (s, "blob_corrupt") if s >= 500 => {
            "the server's stored module does not match its digest (tampered or corrupted storage): report it to the server's operator"
        }
        (s, _) if s >= 500 => "the server failed; retry later",
        _ => "check the command and the server's API.md",
    };
    FleetError::Server {
        what: what.to_owned(),
        status,
        code,
        message,
        hint: hint.to_owned(),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(body).map_err(|e| FleetError::Server {
        what: what.to_owned(),
        status: 200,
        code: "bad_answer".into(),
        message: format!("the answer is not the expected JSON ({e})"),
        hint: "check that the URL names a klive server of a compatible version".into(),
    })
}

/// Sends `request` and returns the body of a 200 answer; any other status becomes
/// [`FleetError::Server`] about `what`.
fn exchange(http: &dyn Http, request: Request<'_>, what: &str) -> Result<Vec<u8>, FleetError> {
    let r = http.request(request)?;
    if r.status != 200 {
        return Err(server_error(what, r.status, &r.body));
    }
    Ok(r.body)
}

/// GETs `url` and returns the body of a 200 answer; `what` names the request in errors.
pub(super) fn get(
    http: &dyn Http,
    url: &str,
    bearer: Option<&str>,
    what: &str,
) -> Result<Vec<u8>, FleetError> {
    let request = Request {
        method: Method::Get,
        url,
        bearer,
        body: None,
    };
    exchange(http, request, what)
}

/// POSTs the JSON `body` to `url` and reads the JSON answer; `what` names the exchange in
/// errors.
pub(super) fn post_json<T: serde::de::DeserializeOwned>(
    http: &dyn Http,
    url: &str,
    bearer: Option<&str>,
    body: &[u8],
    what: &str,
) -> Result<T, FleetError> {
    let request = Request {
        method: Method::Post,
        url,
        bearer,
        body: Some(body),
    };
    parse_json(what, &exchange(http, request, what)?)
}

/// The channel name becomes a directory name under the state dir: refuse anything else.
pub(super) fn check_channel(channel: &str) -> Result<(), FleetError> {
    if is_safe_name(channel) {
        Ok(())
    } else {
        Err(FleetError::refused(
            format!("the server named the channel {channel:?}"),
            "that is not a channel name the agent accepts; report it to the server's operator",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_carry_code_message_and_hint() {
        let e = server_error(
            "the check-in",
            401,
            br#"{"error":{"code":"unauthenticated","message":"unknown credential"}}"#,
        );
        let text = e.to_string();
        assert!(
            text.contains("unauthenticated") && text.contains("register it again"),
            "{text}"
        );
        assert!(!e.is_transient());
        let e = server_error("x", 503, b"<html>busy</html>");
        assert!(e.is_transient(), "{e}");
        let corrupt = br#"{"error":{"code":"blob_corrupt","message":"m"}}"#;
        assert!(!server_error("x", 500, corrupt).is_transient());
    }
}
