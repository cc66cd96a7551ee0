//! Enrollment tokens, host registration, and host credentials.

use super::*;

/// Enrollment tokens, host registration, and host credentials.
#[derive(Debug, Clone, Copy)]
pub struct Enrollment<'a>(pub(super) &'a Service);

impl std::ops::Deref for Enrollment<'_> {
    type Target = Service;
    fn deref(&self) -> &Service {
        self.0
    }
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
        sqlx::query(
            "INSERT INTO enroll_tokens (token_hash, channel, created_by, created_at, expires_at, max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(sha256_hex(token.as_bytes()))
        .bind(&req.channel)
        .bind(&by.name)
        .bind(now)
        .bind(expires)
        .bind(i64::from(req.max_uses))
        .execute(&mut *tx)
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
        if !req.enrollment_token.starts_with(ENROLLMENT_TOKEN_PREFIX) {
            return Err(Error::EnrollmentTokenInvalid);
        }
        let now = self.now();
        let host_id = new_id()?;
        let credential = new_secret(HOST_CREDENTIAL_PREFIX)?;
        let mut tx = self.db.begin_audited().await?;
        let channel: Option<String> = sqlx::query_scalar(
            "UPDATE enroll_tokens SET uses = uses + 1 WHERE token_hash = $1 AND uses < max_uses AND expires_at > $2 RETURNING channel",
        )
        .bind(sha256_hex(req.enrollment_token.as_bytes()))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let channel = channel.ok_or(Error::EnrollmentTokenInvalid)?;
        sqlx::query(
            "INSERT INTO hosts (id, credential_hash, hostname, channel, update_delay_secs, registered_at, last_sequence, kernel_release, build_id, agent_version) VALUES ($1, $2, $3, $4, 0, $5, 0, $6, $7, $8)",
        )
        .bind(&host_id)
        .bind(sha256_hex(credential.as_bytes()))
        .bind(hostname)
        .bind(&channel)
        .bind(now)
        .bind(&req.kernel.release)
        .bind(req.kernel.build_id.as_ref().map(|b| b.to_string()))
        .bind(&req.agent_version)
        .execute(&mut *tx)
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
        let row = sqlx::query(
            "SELECT id, channel, pinned_level, update_delay_secs, last_sequence, build_id, applied_level, applied_state, boot_id, last_error, taint, last_checkin_at, kernel_release, agent_version FROM hosts WHERE credential_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            // Only on failure: tell a revoked host (still running, or its credential stolen)
            // from a guess.
            let revoked: Option<String> =
                sqlx::query_scalar("SELECT id FROM hosts WHERE credential_hash = $1")
                    .bind(&hash)
                    .fetch_optional(&self.db.pool)
                    .await?;
            self.users()
                .audit_failed_auth(if revoked.is_some() {
                    "revoked host credential"
                } else {
                    "host credential"
                })
                .await;
            return Err(Error::Unauthenticated);
        };
        Ok(AuthHost {
            id: row.try_get("id")?,
            channel: row.try_get("channel")?,
            pinned_level: row.try_get("pinned_level")?,
            update_delay_secs: row.try_get("update_delay_secs")?,
            last_sequence: row.try_get("last_sequence")?,
            build_id: row.try_get("build_id")?,
            applied_level: row.try_get("applied_level")?,
            applied_state: row.try_get("applied_state")?,
            boot_id: row.try_get("boot_id")?,
            last_error: row.try_get("last_error")?,
            taint: row.try_get("taint")?,
            last_checkin_at: row.try_get("last_checkin_at")?,
            kernel_release: row.try_get("kernel_release")?,
            agent_version: row.try_get("agent_version")?,
        })
    }
}
