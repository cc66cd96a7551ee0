//! `klive register`: pins the server's CA and TUF root, enrols with a token and saves the
//! registration (which starts the TUF datastores and the check-in state over).

use klive_format::api::{
    FLEET_FORMAT, FleetRegistration, FleetReport, RegisterRequest, RegisterResponse,
};
use klive_format::digest::sha256_hex;
use klive_kernel::{Kernel, identity};
use url::Url;

use super::api::{check_channel, get, post_json};
use super::{Fleet, FleetError, RegisterArgs, RootPin, now};
use crate::transport::{Http, ServerTrust};

/// Normalises `https://host[:port][/]` and refuses what cannot be a server base URL.
fn server_url(s: &str, allow_plain_http: bool) -> Result<String, FleetError> {
    let url = Url::parse(s).map_err(|e| {
        FleetError::Usage(format!(
            "{s:?} is not a URL ({e}); give https://HOST[:PORT]"
        ))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if allow_plain_http => {}
        "http" => {
            return Err(FleetError::Usage(format!(
                "{s} is plain HTTP: the credential would cross the network in clear; use https (or --allow-plain-http on a trusted network)"
            )));
        }
        other => {
            return Err(FleetError::Usage(format!(
                "{s}: scheme {other} is not supported; give https://HOST[:PORT]"
            )));
        }
    }
    if url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || (url.path() != "/" && !url.path().is_empty())
    {
        return Err(FleetError::Usage(format!(
            "{s} must be only scheme, host and port, e.g. https://patch.example.com:8750"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The CA to pin: required for https (the system store is never trusted), none for http.
fn read_ca(args: &RegisterArgs, server: &str) -> Result<Option<String>, FleetError> {
    match (&args.ca, server.starts_with("https://")) {
        (Some(path), _) => Ok(Some(std::fs::read_to_string(path).map_err(|e| {
            FleetError::Usage(format!(
                "cannot read the CA file {}: {e}; give the server's ca.pem",
                path.display()
            ))
        })?)),
        (None, true) => Err(FleetError::Usage(
            "--ca FILE is required for https: the server's DATA/tls/ca.pem (the system store is never trusted)".into(),
        )),
        (None, false) => Ok(None),
    }
}

/// The root to pin: the file given, or the server's root when it has the SHA-256 given.
fn pinned_root(http: &dyn Http, server: &str, pin: &RootPin) -> Result<Vec<u8>, FleetError> {
    match pin {
        RootPin::File(path) => std::fs::read(path).map_err(|e| {
            FleetError::Usage(format!(
                "cannot read the TUF root {}: {e}; copy the server's DATA/tuf/root.json",
                path.display()
            ))
        }),
        RootPin::Sha256(want) => {
            let want = want.trim().to_lowercase();
            if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FleetError::Usage(format!(
                    "--root-sha256 {want:?} is not 64 hex digits; copy it from `klive-server keys init`"
                )));
            }
            let url = format!("{server}/api/v1/tuf/root.json");
            let root = get(http, &url, None, "the TUF root request")?;
            let got = sha256_hex(&root);
            if got != want {
                return Err(FleetError::refused(
                    format!("the server's TUF root has sha256 {got}, not the pinned {want}"),
                    "nothing was registered: check the fingerprint with the server's operator",
                ));
            }
            Ok(root)
        }
    }
}

/// The root's text, when it is a signed TUF root.
fn signed_root_text(root: Vec<u8>) -> Result<String, FleetError> {
    let is_root =
        serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(&root).is_ok();
    String::from_utf8(root)
        .ok()
        .filter(|_| is_root)
        .ok_or_else(|| {
            FleetError::Usage(
                "the TUF root is not a signed root.json; copy DATA/tuf/root.json from the server"
                    .into(),
            )
        })
}

impl<K: Kernel> Fleet<'_, K> {
    /// `klive register`.
    pub fn register(&self, args: &RegisterArgs) -> Result<FleetReport, FleetError> {
        let server = server_url(&args.server, args.allow_plain_http)?;
        let ca_pem = read_ca(args, &server)?;
        let _lock = self.files.lock(self.lock_wait)?;
        let http = self.net.connect(ServerTrust {
            ca_pem: ca_pem.as_deref(),
        })?;
        let tuf_root = signed_root_text(pinned_root(&*http, &server, &args.root)?)?;
        let answer = self.enrol(&*http, &server, args)?;
        let reg = FleetRegistration {
            format: FLEET_FORMAT,
            server: server.clone(),
            host_id: answer.host_id.clone(),
            credential: answer.credential,
            channel: answer.channel.clone(),
            ca_pem,
            tuf_root_sha256: sha256_hex(tuf_root.as_bytes()),
            tuf_root,
            registered_at: now(),
        };
        self.files.save_registration(&reg)?;
        Ok(FleetReport {
            operation: "register".into(),
            result: "registered".into(),
            message: format!(
                "registered with {server} as host {} in channel {}; `klive update` fetches its releases",
                reg.host_id, reg.channel
            ),
            server,
            host_id: reg.host_id,
            channel: reg.channel,
            action: None,
            target: None,
            applied_level: self.applied()?.map(|a| a.level),
        })
    }

    /// Sends the registration request with the enrolment token and this host's kernel.
    fn enrol(
        &self,
        http: &dyn Http,
        server: &str,
        args: &RegisterArgs,
    ) -> Result<RegisterResponse, FleetError> {
        let root_kernel = self.kernel.root();
        let hostname = match &args.hostname {
            Some(h) => h.clone(),
            None => root_kernel
                .read_optional("/proc/sys/kernel/hostname")?
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into()),
        };
        let body = serde_json::to_vec(&RegisterRequest {
            enrollment_token: args.token.trim().to_owned(),
            hostname,
            kernel: identity::kernel_info(root_kernel)?,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .map_err(|e| FleetError::Usage(format!("encoding the request: {e}")))?;
        let url = format!("{server}/api/v1/register");
        let answer: RegisterResponse = post_json(http, &url, None, &body, "the registration")?;
        check_channel(&answer.channel)?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalised_or_refused() {
        assert_eq!(
            server_url("https://patch.example.com:8750/", false).unwrap(),
            "https://patch.example.com:8750"
        );
        assert!(server_url("http://patch.example.com", false).is_err());
        assert_eq!(
            server_url("http://127.0.0.1:1", true).unwrap(),
            "http://127.0.0.1:1"
        );
        for bad in [
            "patch.example.com",
            "ftp://x",
            "https://x/api",
            "https://x?a=1",
            "https://user@x",
        ] {
            assert!(server_url(bad, true).is_err(), "{bad}");
        }
    }
}
