//! Enrollment tokens, host registration, and host credentials.

use super::*;

domain_service! {
    /// Enrollment tokens, host registration, and host credentials.
    Enrollment
}

impl Enrollment<'_> {
    pub async fn create_enroll_token(
        self,
        by: &AuthUser,
        req: &EnrollTokenRequest,
    ) -> Result<EnrollTokenCreated, Error> {
        by.require(Role::Admin)?;
        if req.expires_in_secs == 0 || req.expires_in_secs > MAX_ENROLL_SECS {
            return Err(Error::BadRequest(format!(
                "expires_in_secs must be between 1 and {MAX_ENROLL_SECS}"
            )));
        }
        if req.max_uses == 0 {
            return Err(Error::BadRequest("max_uses must be at least 1".into()));
        }
        let token = new_secret(ENROLLMENT_TOKEN_PREFIX)?;
        let now = self.now();
        let expires = now + req.expires_in_secs as i64 * 1000;
        let mut tx = self.db.begin_audited().await?;
        self.channels().channel(&mut tx, &req.channel).await?;
        store::enrollment::insert_token(
            &mut tx,
            &sha256_hex(token.as_bytes()),
            &req.channel,
            &by.name,
            now,
            expires,
            i64::from(req.max_uses),
        )
        .await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "enroll_token.create",
            &req.channel,
            json!({"expires_at": expires, "max_uses": req.max_uses}),
        )
        .await?;
        tx.commit().await?;
        Ok(EnrollTokenCreated {
            token,
            channel: req.channel.clone(),
            expires_at: rfc3339(expires),
            max_uses: req.max_uses,
        })
    }

    /// Trades a valid enrollment token for a new host and its credential.
    pub async fn register(self, req: &RegisterRequest) -> Result<RegisterResponse, Error> {
        let hostname = req.hostname.trim();
        if hostname.is_empty() || hostname.len() > 253 || hostname.chars().any(char::is_control) {
            return Err(Error::BadRequest(
                "hostname must be 1 to 253 printable characters".into(),
            ));
        }
        // Checked before the token is spent, so a host with bad text can retry.
        check_host_text(&req.kernel, &req.agent_version)?;
        if !req.enrollment_token.starts_with(ENROLLMENT_TOKEN_PREFIX) {
            return Err(Error::EnrollmentTokenInvalid);
        }
        let now = self.now();
        let host_id = new_id()?;
        let credential = new_secret(HOST_CREDENTIAL_PREFIX)?;
        let mut tx = self.db.begin_audited().await?;
        let channel = store::enrollment::use_token(
            &mut tx,
            &sha256_hex(req.enrollment_token.as_bytes()),
            now,
        )
        .await?;
        let channel = channel.ok_or(Error::EnrollmentTokenInvalid)?;
        store::hosts::insert(
            &mut tx,
            &store::hosts::NewHost {
                id: &host_id,
                credential_hash: &sha256_hex(credential.as_bytes()),
                hostname,
                channel: &channel,
                registered_at: now,
                kernel_release: &req.kernel.release,
                build_id: req.kernel.build_id.as_ref().map(|b| b.to_string()),
                agent_version: &req.agent_version,
            },
        )
        .await?;
        let state = crate::store::history::HostState::reported(
            &host_id,
            0,
            now,
            &["register"],
            &req.kernel,
            None,
            None,
            None,
            None,
            None,
        );
        crate::store::history::record(&mut tx, &state).await?;
        audit::append(&mut tx, now, &Actor::Host(host_id.clone()), "host.register", &host_id,
            json!({"hostname": hostname, "channel": channel, "kernel": req.kernel.release, "build_id": req.kernel.build_id})).await?;
        tx.commit().await?;
        Ok(RegisterResponse {
            host_id,
            credential,
            channel,
        })
    }

    /// The host holding this credential, unless revoked. A failure is audited like a failed
    /// sign-in (at most once a minute per kind: malformed, unknown, revoked).
    pub async fn authenticate_host(self, credential: &str) -> Result<AuthHost, Error> {
        if !credential.starts_with(HOST_CREDENTIAL_PREFIX) {
            self.users()
                .audit_failed_auth("malformed host credential")
                .await;
            return Err(Error::Unauthenticated);
        }
        let hash = sha256_hex(credential.as_bytes());
        let host = store::hosts::by_credential(&self.db, &hash).await?;
        let Some(host) = host else {
            // Only on failure: tell a revoked host (still running, or its credential stolen)
            // from a guess.
            let revoked = store::hosts::credential_known(&self.db, &hash).await?;
            self.users()
                .audit_failed_auth(if revoked {
                    "revoked host credential"
                } else {
                    "host credential"
                })
                .await;
            return Err(Error::Unauthenticated);
        };
        Ok(host)
    }
}
